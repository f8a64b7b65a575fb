"""causal_conv3d on every backend against the float64 oracle (python_ref.ops), on small odd shapes.

Each case runs through the public op under ``use_backend``; a backend that cannot run a case (the C++ backend
on float16, Triton without CUDA or its interpreter) is skipped with its own reason. Tolerances: tests/helpers.py.
Allocations start as NaN (``nan_allocations``) and ``out`` buffers are NaN-poisoned, so an element no kernel
writes fails.
"""
import pytest
import torch
import torch.nn.functional as F

import python_ref.ops as oracle
from helpers import (BACKENDS, CL, DTYPE_IDS, DTYPES, assert_backend_close, check_gradients, poisoned, randn,
                     requiring_grad, skip_unless_supported)
from vaekernels import ops, use_backend
from vaekernels.backends import torch as torch_backend

# (cin, cout, T, H, W, kernel, stride, padding, cache frames, cache placement, bias, residual)
# placement "joined": the cache lies right in front of x in one buffer (the engine's layout); "apart": a separate
# tensor (the time-downsampler's pending frames, or a caller that did not join), here in the other memory format
CASES = {
    "3x3x3_T1_nocache": (5, 13, 1, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 0, None, True, False),
    "3x3x3_cache1_apart": (13, 20, 3, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "apart", True, False),
    "3x3x3_cache1_joined": (13, 20, 2, 5, 11, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "joined", False, True),
    "3x3x3_cache2_joined_residual": (13, 13, 3, 7, 9, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "joined", True, True),
    "3x3x3_cache2_apart_residual": (20, 5, 1, 9, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "apart", True, True),
    "time_stride2_cache1": (13, 13, 4, 7, 9, (3, 1, 1), (2, 1, 1), (0, 0, 0), 1, "apart", True, False),
    "time_stride2_nocache": (20, 20, 5, 5, 7, (3, 1, 1), (2, 1, 1), (0, 0, 0), 0, None, True, False),
    "time_stride2_cache2_T1": (13, 13, 1, 3, 5, (3, 1, 1), (2, 1, 1), (0, 0, 0), 2, "apart", True, False),
    "time_stride2_cache2": (13, 13, 4, 3, 5, (3, 1, 1), (2, 1, 1), (0, 0, 0), 2, "apart", False, False),
    "time_pad1_cache2_joined": (13, 26, 3, 7, 9, (3, 1, 1), (1, 1, 1), (1, 0, 0), 2, "joined", True, False),
    # even input channels: bf16 on AMX takes these (cache apart, zero frames, residual; 72 output channels: a
    # 64-column block and a partial one) to the tiles' GEMMs
    "time_stride2_cache1_residual": (20, 72, 4, 7, 9, (3, 1, 1), (2, 1, 1), (0, 0, 0), 1, "apart", True, True),
    "time_pad1_cache1_apart_residual": (20, 26, 3, 7, 9, (3, 1, 1), (1, 1, 1), (1, 0, 0), 1, "apart", False, True),
    "down_4x4_stride2": (13, 13, 3, 9, 11, (1, 4, 4), (1, 2, 2), (0, 1, 1), 0, None, True, False),
    "down_3x3_stride2_residual": (20, 13, 2, 8, 7, (1, 3, 3), (1, 2, 2), (0, 1, 1), 0, None, False, True),
    # wide: the C++ strided conv cuts its weight into two column blocks (144 + 120) and 162 output pixels into
    # blocks of more than one 64-row GEMM chunk
    "down_4x4_stride2_wide": (264, 264, 2, 18, 18, (1, 4, 4), (1, 2, 2), (0, 1, 1), 0, None, True, True),
    "pointwise_residual": (13, 20, 3, 7, 9, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, None, True, True),
    "pointwise_nobias": (20, 5, 1, 7, 9, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, None, False, False),
    "2x3x3_cache1_residual": (5, 5, 2, 3, 4, (2, 3, 3), (1, 1, 1), (1, 1, 1), 1, "apart", True, True),
    # the models' channel counts, whose Triton tiles are two dots (96 = 64 + 32, 160 = 128 + 32, 192 = 128 + 64)
    # over K blocks that divide the input channels
    "3x3x3_96_to_160_cache2_joined_residual": (96, 160, 2, 3, 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "joined", True,
                                               True),
    "3x3x3_160_to_96_cache1_apart": (160, 96, 1, 5, 3, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "apart", True, False),
    "pointwise_96_to_192_residual": (96, 192, 2, 3, 5, (1, 1, 1), (1, 1, 1), (0, 0, 0), 0, None, True, True),
    # the RGB output conv's shape (3 channels out): Triton's narrow kernel, whose 16 x 16 input windows give 14 x 14
    # outputs (19 x 29 crosses their seams both ways); a masked K (20 channels) and the model's 96
    "3x3x3_20_to_3_cache2_joined_residual": (20, 3, 3, 19, 29, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "joined", True,
                                             True),
    "3x3x3_96_to_3_nocache": (96, 3, 2, 17, 15, (3, 3, 3), (1, 1, 1), (1, 1, 1), 0, None, True, False),
    # 512 and 1024 input channels: bf16 on AMX sums the convs of 2 and 3 groups of input channels (C++
    # amx_input_group), the residual and bias added once
    "3x3x3_512_to_24_cache2_joined_residual": (512, 24, 2, 5, 7, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2, "joined", True,
                                               True),
    "3x3x3_1024_to_16_cache1_apart": (1024, 16, 1, 7, 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "apart", True, False),
}
BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def inputs(case, dtype, channels_last=True):
    """(x, weight, bias, cache, stride, padding, residual) of a case, the weight scaled so outputs are O(1)."""
    cin, cout, t, h, w, kernel, stride, padding, frames, placement, has_bias, has_residual = CASES[case]
    torch.manual_seed(list(CASES).index(case))
    if placement == "joined":
        buf = randn(1, cin, frames + t, h, w, dtype=dtype)
        cache, x = buf[:, :, :frames], buf[:, :, frames:]
    else:
        x = randn(1, cin, t, h, w, dtype=dtype, channels_last=channels_last)
        cache = randn(1, cin, frames, h, w, dtype=dtype, channels_last=not channels_last) if frames else None
    weight = randn(cout, cin, *kernel, dtype=dtype, scale=(cin * kernel[0] * kernel[1] * kernel[2]) ** -0.5,
                   channels_last=False)
    bias = randn(cout, dtype=dtype) if has_bias else None
    shape = ops.conv_output_shape(x.shape, weight.shape, frames, stride, padding)
    residual = randn(*shape, dtype=dtype) if has_residual else None
    return x, weight, bias, cache, stride, padding, residual


def run(backend, args, out=None):
    x, weight, bias, cache, stride, padding, residual = args
    skip_unless_supported(backend, "causal_conv3d", x, weight, bias, cache, stride, padding, residual, out)
    with use_backend(backend):
        return ops.causal_conv3d(x, weight, bias, cache=cache, stride=stride, padding=padding, residual=residual,
                                 out=out)


def check(backend, y, args):
    assert_backend_close(backend, y, oracle.causal_conv3d(*args), torch_backend.causal_conv3d(*args, None))


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", list(CASES))
def test_causal_conv3d(case, dtype, backend, nan_allocations):
    args = inputs(case, dtype)
    y = run(backend, args)
    check(backend, y, args)
    assert y.is_contiguous(memory_format=CL)


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", list(CASES))
def test_out_into_frames_of_a_buffer(case, dtype, backend):
    """`out` is the body of a larger channels-last buffer, as the engine hands out (buf[:, :, 2:])."""
    args = inputs(case, dtype)
    shape = ops.conv_output_shape(args[0].shape, args[1].shape, 0 if args[3] is None else args[3].shape[2],
                                  args[4], args[5])
    buf = poisoned(shape[0], shape[1], 2 + shape[2], *shape[3:], dtype=dtype)
    out = buf[:, :, 2:]
    assert run(backend, args, out) is out
    check(backend, out, args)
    assert torch.isnan(buf[:, :, :2]).all(), "wrote outside out"


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", ["time_pad1_cache2_joined", "time_stride2_cache1", "time_pad1_cache1_apart_residual",
                                  "3x3x3_cache2_joined_residual", "pointwise_residual", "down_4x4_stride2",
                                  "3x3x3_20_to_3_cache2_joined_residual"])
def test_out_every_other_frame(case, dtype, backend):
    """`out` as every other frame of a buffer (the time-upsampler's interleaved output, out[:, :, s::2])."""
    args = inputs(case, dtype)
    n, c, t, h, w = ops.conv_output_shape(args[0].shape, args[1].shape, 0 if args[3] is None else args[3].shape[2],
                                          args[4], args[5])
    buf = poisoned(n, c, 2 * t + 1, h, w, dtype=dtype)
    run(backend, args, buf[:, :, 1::2])
    check(backend, buf[:, :, 1::2], args)
    assert torch.isnan(buf[:, :, 0::2]).all(), "wrote outside out"


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", ["3x3x3_cache2_apart_residual", "pointwise_nobias", "time_stride2_cache1",
                                  "3x3x3_96_to_3_nocache"])
def test_contiguous_layout(case, dtype, backend, nan_allocations):
    """NCDHW inputs (not the model's layout) give NCDHW outputs, and `out` may be an NCDHW slice (the decoder head
    writing into the result video)."""
    args = inputs(case, dtype, channels_last=False)
    y = run(backend, args)
    assert y.is_contiguous()
    check(backend, y, args)
    n, c, t, h, w = y.shape
    video = poisoned(n, c, t + 2, h, w, dtype=dtype, channels_last=False)
    run(backend, args, video[:, :, 1:1 + t])
    check(backend, video[:, :, 1:1 + t], args)
    assert torch.isnan(video[:, :, 0]).all() and torch.isnan(video[:, :, -1]).all()


@BACKEND
@DTYPE
def test_pointwise_on_a_channel_slice(dtype, backend):
    """A 1x1x1 conv of a channel slice of a wider tensor (the attention's q, k, v rows) into an NCDHW `out`."""
    wide = randn(1, 15, 2, 3, 5, dtype=dtype, seed=2)
    weight, bias = randn(13, 5, 1, 1, 1, dtype=dtype, scale=0.5), randn(13, dtype=dtype)
    args = (wide[:, 5:10], weight, bias, None, (1, 1, 1), (0, 0, 0), randn(1, 13, 2, 3, 5, dtype=dtype))
    out = poisoned(1, 13, 2, 3, 5, dtype=dtype, channels_last=False)
    run(backend, args, out)
    check(backend, out, args)


@BACKEND
@DTYPE
def test_time_upsample_into_every_other_frame(dtype, backend):
    """The two channel halves of a (3,1,1) conv's weight, each into frames s::2 of one buffer (upsample3d)."""
    x, cache = randn(1, 5, 3, 5, 7, dtype=dtype, seed=3), randn(1, 5, 2, 5, 7, dtype=dtype)
    full_w, full_b = randn(10, 5, 3, 1, 1, dtype=dtype, scale=0.3), randn(10, dtype=dtype)
    out = poisoned(1, 5, 1 + 6, 5, 7, dtype=dtype)
    for s in range(2):
        args = (x, full_w[5 * s:5 * (s + 1)], full_b[5 * s:5 * (s + 1)], cache, (1, 1, 1), (1, 0, 0), None)
        run(backend, args, out[:, :, 1 + s::2])
        check(backend, out[:, :, 1 + s::2], args)
    assert out[:, :, 0].isnan().all()


@BACKEND
@pytest.mark.parametrize("h,w", [(17, 23), (32, 32)])
@pytest.mark.parametrize("ph", [1, 2])
@DTYPE
def test_downsampler_zero_edge_weight(h, w, ph, dtype, backend):
    """The downsampler's conv: a 3x3 stride-2 conv zero-padded on the right and bottom only, written as a 4x4
    stride-2 conv with padding 1 whose first weight row and column are zero (layers.Resample); the C++ op drops
    the zero taps. Over a batch of 2, odd and even planes, 40 channels, also into every other frame of a buffer.
    ``ph`` 2: the 4x4 conv padded 2 rows (a split's bordered band, layers.bands): the 3x3 conv padded 1 row on top
    and 2 below."""
    torch.manual_seed(h)
    c = 40
    x = randn(2, c, 3, h, w, dtype=dtype)
    w3 = randn(c, c, 3, 3, dtype=dtype, scale=(9 * c) ** -0.5)
    weight = F.pad(w3, (1, 0, 1, 0)).unsqueeze(2).contiguous()
    args = (x, weight, randn(c, dtype=dtype), None, (1, 2, 2), (0, ph, 1), None)
    # the 4x4 form is the upstream conv: zero padding on the right and bottom, 3x3 stride 2
    upstream = F.conv2d(F.pad(x.double().transpose(1, 2).flatten(0, 1), (0, 1, ph - 1, ph)), w3.double(),
                        args[2].double(), stride=2).unflatten(0, (2, 3)).transpose(1, 2)
    torch.testing.assert_close(oracle.causal_conv3d(*args), upstream, rtol=0, atol=1e-12)  # float64, both exact
    check(backend, run(backend, args), args)
    buf = poisoned(2, c, 6, *upstream.shape[3:], dtype=dtype)
    run(backend, args, buf[:, :, 1::2])
    check(backend, buf[:, :, 1::2], args)
    assert torch.isnan(buf[:, :, 0::2]).all(), "wrote outside out"
    # a write into the zero edge (same tensor, new version) makes it a 4x4 conv again: backends that run the
    # 3x3 form when the edge is zero (Triton) must notice
    with torch.no_grad():
        weight[:, :, 0, 0, 1:] = w3[:, :, 0]
    check(backend, run(backend, args), args)
    with torch.inference_mode():  # an inference tensor has no version counter: read each call
        frozen = F.pad(w3, (1, 0, 1, 0)).unsqueeze(2).contiguous()
        args = (x, frozen, *args[2:])
        check(backend, run(backend, args), args)


@BACKEND
@pytest.mark.parametrize("case", ["3x3x3_cache1_apart", "time_stride2_cache1", "pointwise_residual"])
def test_float16(case, backend):
    args = inputs(case, torch.float16)
    check(backend, run(backend, args), args)


@BACKEND
@DTYPE
def test_no_output_frames(dtype, backend):
    x = randn(1, 5, 1, 5, 5, dtype=dtype)
    args = (x, randn(5, 5, 3, 1, 1, dtype=dtype), None, None, (2, 1, 1), (0, 0, 0), None)
    assert run(backend, args).shape == (1, 5, 0, 5, 5)


@BACKEND
def test_opcheck(backend):
    x, weight, bias, cache, stride, padding, residual = inputs("3x3x3_cache2_apart_residual", torch.float32)
    args = (x, weight, bias, cache, list(stride), list(padding), residual)
    skip_unless_supported(backend, "causal_conv3d", *args)
    out = torch.empty(ops.conv_output_shape(x.shape, weight.shape, 2, stride, padding)).contiguous(memory_format=CL)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.vaekernels.causal_conv3d.default, args)
        torch.library.opcheck(torch.ops.vaekernels.causal_conv3d.default, requiring_grad(args))
        torch.library.opcheck(torch.ops.vaekernels.causal_conv3d_out.default, args + (out,))
        grad = randn(*out.shape, seed=19)
        torch.library.opcheck(torch.ops.vaekernels.causal_conv3d_weight_grad.default,
                              (grad, x, weight, cache, list(stride), list(padding)))
        torch.library.opcheck(torch.ops.vaekernels.causal_conv3d_data_grad.default, (grad, weight, 2, [1, 1]))


def test_bad_arguments():
    x = torch.zeros(1, 5, 2, 4, 4)
    with pytest.raises(ValueError, match="weight must be"):
        ops.causal_conv3d(x, torch.zeros(3, 4, 3, 3, 3))
    with pytest.raises(ValueError, match="cache must be"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 3, 3, 3), cache=torch.zeros(1, 5, 3, 4, 4), padding=(1, 1, 1))
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 1, 1, 1), residual=torch.zeros(1, 3, 2, 4, 5))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 1, 1, 1), out=torch.zeros(1, 3, 2, 4, 5))
    # operands of another dtype would be read as x's by the kernels
    with pytest.raises(ValueError, match=r"weight must be torch.float32 on cpu, as x is; got torch.bfloat16"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 1, 1, 1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"bias must be torch.float32 on cpu, as x is; got torch.float64"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 1, 1, 1), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"out must be torch.float32"):
        ops.causal_conv3d(x, torch.zeros(3, 5, 1, 1, 1), out=torch.zeros(1, 3, 2, 4, 4, dtype=torch.bfloat16))


@BACKEND
@pytest.mark.parametrize("case", ["3x3x3_cache2_joined_residual", "time_stride2_cache1", "down_4x4_stride2",
                                  "pointwise_residual"])
def test_gradients(case, backend):
    """Gradients of x, weight, bias, cache and residual (recomputed on the torch backend): gradcheck in float64,
    and float32 on each backend's forward against the float64 oracle's."""
    args = [t.double() if torch.is_tensor(t) else t for t in inputs(case, torch.float32)]
    x, weight, bias, cache, stride, padding, residual = args
    skip_unless_supported(backend, "causal_conv3d", x.float(), weight.float(), None, None, stride, padding, None, None)
    grad_args = [i for i in (0, 1, 2, 3, 6) if args[i] is not None]
    op = lambda x, w, b, c, s, p, r: ops.causal_conv3d(x, w, b, cache=c, stride=s, padding=p, residual=r)
    check_gradients(backend, op, oracle.causal_conv3d, args, grad_args)


def weight_grad(backend, grad, x, weight, cache, stride, padding):
    skip_unless_supported(backend, "causal_conv3d_weight_grad", grad, x, weight, cache, stride, padding)
    with use_backend(backend):
        return torch.ops.vaekernels.causal_conv3d_weight_grad(grad, x, weight, cache, list(stride), list(padding))


def check_weight_grad(backend, grad, x, weight, cache, stride, padding):
    """The op's weight gradient against autograd through the float64 oracle at the same (rounded) inputs, with the
    tolerance rule of the forward (the torch backend's weight gradient in the same dtype as plain PyTorch)."""
    got = weight_grad(backend, grad, x, weight, cache, stride, padding)
    w64 = weight.detach().double().requires_grad_(True)
    y = oracle.causal_conv3d(x.double(), w64, None, None if cache is None else cache.double(), stride, padding, None)
    [want] = torch.autograd.grad(y, [w64], grad.double())
    assert got.dtype == weight.dtype
    assert_backend_close(backend, got, want, torch_backend.causal_conv3d_weight_grad(grad, x, weight, cache, stride,
                                                                                      padding))


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", ["3x3x3_T1_nocache", "3x3x3_cache1_apart", "3x3x3_cache2_joined_residual",
                                  "3x3x3_96_to_160_cache2_joined_residual", "3x3x3_160_to_96_cache1_apart",
                                  "2x3x3_cache1_residual", "time_pad1_cache2_joined", "pointwise_residual",
                                  "down_4x4_stride2"])
def test_weight_grad(case, dtype, backend, nan_allocations):
    """The weight-gradient op of every backend: the C++ Winograd F(2x2, 3x3) one for 3x3 taps with 8+ input channels
    (here 13, 96 and 160: partial SIMD vectors and tiles), ATen's for the rest (5 input channels, 3x1x1, 1x1x1,
    strided)."""
    x, weight, _, cache, stride, padding, _ = inputs(case, dtype)
    shape = ops.conv_output_shape(x.shape, weight.shape, 0 if cache is None else cache.shape[2], stride, padding)
    check_weight_grad(backend, randn(*shape, dtype=dtype, seed=11), x, weight, cache, stride, padding)


@BACKEND
@DTYPE
@pytest.mark.parametrize("cout, cin, kt, pt, c", [(13, 9, 3, 1, 0), (384, 192, 3, 1, 2), (192, 384, 3, 1, 1),
                                                  (5, 12, 3, 1, 2), (16, 16, 1, 0, 0), (24, 16, 3, 1, 1)])
def test_data_grad(cout, cin, kt, pt, c, dtype, backend, nan_allocations):
    """The data-gradient op (the gradient of a stride-1 conv's cache and x as one conv of the output's gradient with
    ``front`` zero frames before it and kt - 1 after) against autograd through the float64 oracle, with 0, 1 and 2
    cache frames (front 0 and 1: odd). C++ in float32 with 8+ channels in the gradient: F(2x2, 3x3) with the forward's
    transformed weight permuted and transposed, the zero frames read as none (here partial 8x8 blocks, and column
    blocks on both sides at 192 and 384 channels); the rest a conv of copies. The gradient is a frame window of a
    channels-last buffer (as the engine's tensors are), but for the 24-channel case's NCTHW one."""
    x, cache = (randn(2, cin, t, 7, 9, dtype=dtype, seed=seed) for t, seed in ((4, 21), (c, 24)))
    weight = randn(cout, cin, kt, 3, 3, dtype=dtype, scale=(cin * 9 * kt) ** -0.5, channels_last=False, seed=22)
    frames = max(0, 2 * pt - c) + c + x.shape[2] - kt + 1
    grad = randn(2, cout, frames + 1, 7, 9, dtype=dtype, seed=23)[:, :, 1:]
    if cout == 24:
        grad = grad.contiguous()
    front = kt - 1 - max(0, 2 * pt - c)
    skip_unless_supported(backend, "causal_conv3d_data_grad", grad, weight, front, (1, 1))
    with use_backend(backend):
        got = torch.ops.vaekernels.causal_conv3d_data_grad(grad, weight, front, [1, 1])
    x64, cache64 = x.double().requires_grad_(True), cache.double().requires_grad_(True)
    y = oracle.causal_conv3d(x64, weight.double(), None, cache64 if c else None, (1, 1, 1), (pt, 1, 1), None)
    want = torch.cat(torch.autograd.grad(y, [cache64, x64], grad.double(), allow_unused=True)[c == 0:], 2)
    assert got.shape == (2, cin, c + x.shape[2], 7, 9) and got.dtype == dtype
    assert got.stride(1) == 1 or cout == 24  # channels-last out of a channels-last window
    plain = torch_backend.causal_conv3d_data_grad(grad, weight, front, (1, 1))
    assert_backend_close(backend, got, want, plain)


@BACKEND
@DTYPE
def test_weight_grad_blocks_and_layouts(dtype, backend, nan_allocations):
    """Two clips of 9 frames of 111x109 (the C++ gradient's blocks: 4 + 4 + 1 output frames, several groups of
    tiles, full 8- or 16-lane transposes and a partial one), 2 time taps; then NCTHW x and gradient with a cache in
    channels-last, and a stride-0 gradient (of a sum). The large case's gradient is zero but at 1% of its positions,
    spread over every block, so that each weight's sum has a few thousand terms, not 200,000 (whose float32 error
    would pass the tolerance floor that stands for sums of a few hundred)."""
    x, cache = randn(2, 8, 8, 111, 109, dtype=dtype, seed=12), randn(2, 8, 1, 111, 109, dtype=dtype, seed=13)
    weight = randn(12, 8, 2, 3, 3, dtype=dtype, scale=0.1, channels_last=False, seed=14)
    grad = randn(2, 12, 9, 111, 109, dtype=dtype, seed=15)
    grad = grad * (torch.rand(grad.shape, generator=torch.Generator().manual_seed(16)) < 0.01).to(dtype)
    check_weight_grad(backend, grad, x, weight, cache, (1, 1, 1), (1, 1, 1))
    x, cache = randn(1, 16, 3, 17, 18, dtype=dtype, channels_last=False, seed=16), randn(1, 16, 2, 17, 18, dtype=dtype)
    weight = randn(9, 16, 3, 3, 3, dtype=dtype, scale=0.1, channels_last=False, seed=17)
    check_weight_grad(backend, randn(1, 9, 3, 17, 18, dtype=dtype, channels_last=False, seed=18), x, weight, cache,
                      (1, 1, 1), (1, 1, 1))
    check_weight_grad(backend, torch.ones(()).to(dtype).expand(1, 9, 3, 17, 18), x, weight, cache, (1, 1, 1),
                      (1, 1, 1))
