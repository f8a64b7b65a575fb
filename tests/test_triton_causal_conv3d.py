"""The Triton causal_conv3d kernel, run by the Triton interpreter on CPU.

Oracle: F.conv3d in float64 on an explicitly built sequence (zero frames, cache, x, spatial zero
padding), written here independently of every backend. Tolerances: fp32 at most twice the torch
backend's fp32 error (plus a floor of fp32 rounding of the largest value); bf16/fp16 the torch
backend's error in that dtype plus one ulp (the kernel rounds once, from fp32, but the
interpreter's fp32->bf16 conversion truncates instead of rounding). Every output starts as NaN, so
an element the kernel does not write fails. test_triton_upsample_conv2d reuses these helpers.
"""
import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the kernels must be defined for the interpreter

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vaekernels.backends import torch as torch_backend
# the module, not the package's re-exported function of the same name
triton_conv = importlib.import_module("vaekernels.backends.triton.causal_conv3d")

CL = torch.channels_last_3d


def oracle(x, weight, bias, cache, stride, padding, residual):
    pt, ph, pw = padding
    frames = [] if cache is None else [cache.double()]
    zeros = max(0, 2 * pt - sum(f.shape[2] for f in frames))
    seq = torch.cat([x.new_zeros(*x.shape[:2], zeros, *x.shape[3:]).double(), *frames, x.double()], dim=2)
    seq = F.pad(seq, (pw, pw, ph, ph))
    y = F.conv3d(seq, weight.double(), None if bias is None else bias.double(), stride)
    return y if residual is None else y + residual.double()


def ulp(v, dtype):
    """Spacing of ``dtype`` numbers at |v|."""
    bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(1e-30))) - bits)


def assert_close(y, ref, torch_y):
    """``y`` against the float64 oracle ``ref``, given the torch backend's result in y's dtype."""
    assert y.shape == ref.shape
    assert not y.isnan().any(), "elements left unwritten"
    err = (y.double() - ref).abs()
    torch_err = (torch_y.double() - ref).abs().max()
    if y.dtype == torch.float32:
        bound = 2 * torch_err + 2 ** -22 * ref.abs().max()
    else:
        bound = torch_err + ulp(ref, y.dtype)
    assert (err <= bound).all(), f"max error {err.max().item():.3g}, torch backend's {torch_err.item():.3g}"


def check(y, args):
    assert_close(y, oracle(*args), torch_backend.causal_conv3d(*args, None))


def poison_allocations(monkeypatch, module):
    """Outputs that ``module`` allocates start as NaN too."""
    def nan_empty(x, shape, dtype=None):
        fmt = CL if x.is_contiguous(memory_format=CL) and not x.is_contiguous() else torch.contiguous_format
        return torch.full(shape, float("nan"), dtype=dtype or x.dtype).contiguous(memory_format=fmt)
    monkeypatch.setattr(module, "empty_output", nan_empty)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    poison_allocations(monkeypatch, triton_conv)


def act(n, c, t, h, w, dtype):
    """A channels-last activation, as the model keeps them."""
    return torch.randn(n, c, t, h, w).to(dtype).contiguous(memory_format=CL)


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_frames, t", [(0, 3), (1, 1), (2, 3), (2, 1)])
def test_3x3x3_with_cache_bias_residual(dtype, cache_frames, t):
    torch.manual_seed(cache_frames * 10 + t)
    x = act(1, 13, t, 5, 7, dtype)
    # a separate cache in the other memory format: read by its own strides
    cache = torch.randn(1, 13, cache_frames, 5, 7).to(dtype) if cache_frames else None
    weight, bias = torch.randn(5, 13, 3, 3, 3).to(dtype), torch.randn(5).to(dtype)
    residual = act(1, 5, t, 5, 7, dtype)
    args = (x, weight, bias, cache, (1, 1, 1), (1, 1, 1), residual)
    y = triton_conv.causal_conv3d(*args, None)
    assert y.is_contiguous(memory_format=CL)
    check(y, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_in_front_of_x_and_strided_out(dtype):
    """The engine's layout: cache and chunk adjacent in one buffer; output into a frame slice."""
    torch.manual_seed(1)
    buf = act(2, 6, 2 + 3, 7, 5, dtype)
    cache, x = buf[:, :, :2], buf[:, :, 2:]
    weight, bias = torch.randn(13, 6, 3, 3, 3).to(dtype), torch.randn(13).to(dtype)
    dst = torch.full((2, 13, 5, 7, 5), float("nan"), dtype=dtype).contiguous(memory_format=CL)
    args = (x, weight, bias, cache, (1, 1, 1), (1, 1, 1), None)
    y = triton_conv.causal_conv3d(*args, dst[:, :, 2:])
    assert y.data_ptr() == dst[:, :, 2:].data_ptr()
    check(y, args)
    assert dst[:, :, :2].isnan().all(), "wrote outside out"


@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_on_strided_input(dtype):
    """1x1x1 conv on a channel slice of a wider tensor (attention's qkv rows), output not channels-last."""
    torch.manual_seed(2)
    wide = act(1, 15, 2, 3, 5, dtype)
    x = wide[:, 5:10]
    weight, bias = torch.randn(13, 5, 1, 1, 1).to(dtype), torch.randn(13).to(dtype)
    out = torch.full((1, 13, 2, 3, 5), float("nan"), dtype=dtype)
    args = (x, weight, bias, None, (1, 1, 1), (0, 0, 0), act(1, 13, 2, 3, 5, dtype))
    check(triton_conv.causal_conv3d(*args, out), args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_time_upsample_into_every_other_frame(dtype):
    """(3,1,1) conv, channel-half weight slice, output frames s::2 of a buffer (upsample3d)."""
    torch.manual_seed(3)
    x, cache = act(1, 5, 3, 5, 7, dtype), act(1, 5, 2, 5, 7, dtype)
    full_w, full_b = torch.randn(10, 5, 3, 1, 1).to(dtype), torch.randn(10).to(dtype)
    out = torch.full((1, 5, 1 + 6, 5, 7), float("nan"), dtype=dtype).contiguous(memory_format=CL)
    for s in range(2):
        args = (x, full_w[5 * s:5 * (s + 1)], full_b[5 * s:5 * (s + 1)], cache, (1, 1, 1), (1, 0, 0), None)
        check(triton_conv.causal_conv3d(*args, out[:, :, 1 + s::2]), args)
    assert out[:, :, 0].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_frames, t", [(0, 5), (1, 4), (2, 1), (2, 4)])
def test_time_downsample_stride_2(dtype, cache_frames, t):
    torch.manual_seed(4 + cache_frames)
    x = act(1, 13, t, 3, 5, dtype)
    cache = act(1, 13, cache_frames, 3, 5, dtype) if cache_frames else None
    weight, bias = torch.randn(13, 13, 3, 1, 1).to(dtype), torch.randn(13).to(dtype)
    args = (x, weight, bias, cache, (2, 1, 1), (0, 0, 0), None)
    check(triton_conv.causal_conv3d(*args, None), args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spatial_downsample_4x4_stride_2(dtype):
    """downsample2d as the model runs it: a 4x4 stride-2 conv, padding 1, zero first row and column."""
    torch.manual_seed(5)
    x = act(1, 13, 2, 5, 7, dtype)
    weight = F.pad(torch.randn(13, 13, 3, 3), (1, 0, 1, 0)).unsqueeze(2).to(dtype)
    args = (x, weight, torch.randn(13).to(dtype), None, (1, 2, 2), (0, 1, 1), None)
    check(triton_conv.causal_conv3d(*args, None), args)


def test_fp16():
    torch.manual_seed(6)
    x, cache = act(1, 13, 2, 5, 7, torch.float16), act(1, 13, 2, 5, 7, torch.float16)
    args = (x, torch.randn(5, 13, 3, 3, 3).half(), torch.randn(5).half(), cache, (1, 1, 1), (1, 1, 1), None)
    check(triton_conv.causal_conv3d(*args, None), args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_tiles(dtype, monkeypatch):
    """Small tiles, so that M, N and K each span several blocks with ragged last ones."""
    monkeypatch.setattr(triton_conv, "_interpreter_blocks", lambda m, cin, cout: (64, 16, 16))
    torch.manual_seed(7)
    x, cache = act(1, 40, 2, 5, 7, dtype), act(1, 40, 1, 5, 7, dtype)
    args = (x, torch.randn(20, 40, 3, 3, 3).to(dtype), torch.randn(20).to(dtype), cache, (1, 1, 1), (1, 1, 1),
            act(1, 20, 2, 5, 7, dtype))
    check(triton_conv.causal_conv3d(*args, None), args)


@triton.jit
def _offset_probe(out_ptr, idx_ptr, s0, s1, s2):
    r = tl.arange(0, 4)
    i = tl.load(idx_ptr + r)
    tl.store(out_ptr + r, triton_conv._offset(i, s0, i + 1, s1, i + 2, s2))


def test_offset_helper_is_int64():
    """int32 indices times strides (int32 and int64 ones) with products far past 2^31."""
    idx = torch.tensor([0, 3, 2 ** 20, 2 ** 30 - 3], dtype=torch.int32)
    out = torch.empty(4, dtype=torch.int64)
    s0, s1, s2 = 2 ** 31 - 1, 3, 2 ** 32 + 5
    _offset_probe[(1,)](out, idx, s0, s1, s2)
    assert out.tolist() == [i * s0 + (i + 1) * s1 + (i + 2) * s2 for i in idx.tolist()]


def test_offsets_past_2_31():
    """A conv whose x, out and residual have element offsets above 2^31 (a 720p clip's activations
    are that large), without allocating them: views with a channel stride of 2^29 + 16 into one
    buffer of 2^31 + 2^23 fp16 elements, reserved but touched only where the views lie."""
    c, t, h, w = 5, 2, 3, 4
    chan = 2 ** 29 + 16
    storage = torch.empty(2 ** 31 + 2 ** 23, dtype=torch.float16)
    assert (c - 1) * chan >= 2 ** 31

    def view(frames, offset):  # channel planes 2^29 apart, frames and pixels dense within a plane
        return storage.as_strided((1, c, frames, h, w), (0, chan, h * w, w, 1), storage_offset=offset)

    x, out, residual = view(t, 0), view(t + 1, 2 ** 21), view(t + 1, 2 ** 22)
    cache = storage.as_strided((1, c, 1, h, w), (0, 1, 0, w * c, c), storage_offset=2 ** 20)
    torch.manual_seed(8)
    for v in (x, cache, residual):
        v.copy_(torch.randn(v.shape))
    out.fill_(float("nan"))
    # padding (1,1,1) with a 1-frame cache: one zero frame, the cache, x -> t + 1 output frames
    args = (x, torch.randn(c, c, 2, 3, 3).half(), torch.randn(c).half(), cache, (1, 1, 1), (1, 1, 1), residual)
    check(triton_conv.causal_conv3d(*args, out), args)


def test_no_output_frames():
    x = act(1, 4, 1, 3, 3, torch.float32)
    y = triton_conv.causal_conv3d(x, torch.randn(4, 4, 3, 1, 1), None, None, (2, 1, 1), (0, 0, 0), None, None)
    assert y.shape == (1, 4, 0, 3, 3)
