"""The Triton kernels' own paths, beyond the op semantics every backend is tested for (tests/ops/), run by the
Triton interpreter on CPU: several tiles per axis with ragged last ones, int64 offsets past 2^31, channel counts
wider than one tile, long key sequences. Oracles: python_ref.ops; tolerances: tests/helpers.py."""
import importlib

import pytest
import torch
import triton
import triton.language as tl

import python_ref.ops as oracle
from helpers import assert_backend_close, randn
from vaekernels.backends import torch as torch_backend

# the kernel modules, not the package's re-exported functions of the same names
conv = importlib.import_module("vaekernels.backends.triton.causal_conv3d")
up = importlib.import_module("vaekernels.backends.triton.upsample_conv2d")
norm = importlib.import_module("vaekernels.backends.triton.rms_norm_silu")
attention = importlib.import_module("vaekernels.backends.triton.spatial_attention")
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def check_conv(y, args):
    assert_backend_close("triton", y, oracle.causal_conv3d(*args), torch_backend.causal_conv3d(*args, None))


def small_tiles(cin, cout, taps, dtype, precision, plain=True, interpret_rows=None):
    """64 x (16 + 16) x 16 tiles with masked K and N (the GPU's general path)."""
    return {"PACKED": False, "EVEN_K": False, "EVEN_N": False, "BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_N2": 16,
            "BLOCK_K": 16}, 4


@DTYPES
def test_conv_many_tiles(dtype, monkeypatch, nan_allocations):
    """Small tiles, so that M, N and K each span several blocks with ragged last ones."""
    monkeypatch.setattr(conv, "config", small_tiles)
    x, cache = randn(1, 40, 2, 5, 7, dtype=dtype, seed=7), randn(1, 40, 1, 5, 7, dtype=dtype)
    args = (x, randn(20, 40, 3, 3, 3, dtype=dtype, scale=0.1, channels_last=False), randn(20, dtype=dtype), cache,
            (1, 1, 1), (1, 1, 1), randn(1, 20, 2, 5, 7, dtype=dtype))
    check_conv(conv.causal_conv3d(*args, None), args)


def test_narrow_kernel_takes_the_convs_with_few_output_channels():
    """The RGB output conv's shape (3 channels out of 3x3 taps, cache joined) goes to the narrow kernel; a cache
    held apart, more channels, a stride, a kernel over half the window, or an upsampling go to the general one."""
    from vaekernels.backends.triton._launch import recording

    def kernel(cout, placement="joined", kernel=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1)):
        buf = randn(1, 8, 4, 9, 9)
        weight = randn(cout, 8, *kernel, channels_last=False)
        cache, x = (buf[:, :, :2], buf[:, :, 2:]) if placement == "joined" else (randn(1, 8, 2, 9, 9), buf)
        with recording() as cases:
            conv.causal_conv3d(x, weight, None, cache, stride, padding, None, None)
        (case,) = cases.values()
        return case["fn"]

    assert kernel(3) is conv._narrow_conv3d_kernel
    assert kernel(3, kernel=(1, 3, 3), padding=(0, 1, 1)) is conv._narrow_conv3d_kernel
    assert kernel(4) is conv._causal_conv3d_kernel  # 36 columns
    assert kernel(3, "apart") is conv._causal_conv3d_kernel
    assert kernel(3, kernel=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) is conv._causal_conv3d_kernel
    assert kernel(3, kernel=(3, 1, 1), padding=(1, 0, 0)) is conv._causal_conv3d_kernel  # one spatial tap
    assert kernel(1, kernel=(1, 1, 20), padding=(0, 0, 10)) is conv._causal_conv3d_kernel  # wider than the window
    assert kernel(3, kernel=(1, 9, 1), padding=(0, 4, 0)) is conv._causal_conv3d_kernel  # over half of it
    with recording() as cases:
        up.upsample_conv2d(randn(1, 8, 2, 5, 5), randn(3, 8, 3, 3), None, None)
    assert [case["fn"] for case in cases.values()] == [conv._causal_conv3d_kernel]


@DTYPES
def test_narrow_conv_windows_frames_and_batch(dtype, nan_allocations):
    """The narrow kernel on two clips of three frames behind a joined cache, 16 x 30 outputs (two and three
    windows of 14, ragged), into an NCDHW output with an NCDHW residual (the decoder head's layout)."""
    buf = randn(2, 24, 5, 16, 30, dtype=dtype, seed=3)
    cache, x = buf[:, :, :2], buf[:, :, 2:]
    args = (x, randn(3, 24, 3, 3, 3, dtype=dtype, scale=0.1, channels_last=False), randn(3, dtype=dtype), cache,
            (1, 1, 1), (1, 1, 1), randn(2, 3, 3, 16, 30, dtype=dtype, channels_last=False))
    out = torch.full((2, 3, 3, 16, 30), float("nan"), dtype=dtype)
    conv.causal_conv3d(*args, out)
    check_conv(out, args)


def test_upsample_contiguous_input_on_small_tiles(monkeypatch, nan_allocations):
    """An input in the default layout, and tiles small enough that M, N and K each have several blocks."""
    monkeypatch.setattr(conv, "config", small_tiles)
    x, weight, bias = randn(1, 20, 2, 3, 5, channels_last=False, seed=0), randn(18, 20, 3, 3, scale=0.1), randn(18)
    residual = randn(1, 18, 2, 6, 10)
    y = up.upsample_conv2d(x, weight, bias, residual)
    assert y.is_contiguous()
    assert_backend_close("triton", y, oracle.upsample_conv2d(x, weight, bias, residual),
                         torch_backend.upsample_conv2d(x, weight, bias, residual))


@triton.jit
def _offset_probe(out_ptr, idx_ptr, s0, s1, s2):
    r = tl.arange(0, 4)
    i = tl.load(idx_ptr + r)
    tl.store(out_ptr + r, conv._offset(i, s0, i + 1, s1, i + 2, s2))


def test_offset_helper_is_int64():
    """int32 indices times strides (int32 and int64 ones) with products far past 2^31."""
    idx = torch.tensor([0, 3, 2 ** 20, 2 ** 30 - 3], dtype=torch.int32)
    out = torch.empty(4, dtype=torch.int64)
    s0, s1, s2 = 2 ** 31 - 1, 3, 2 ** 32 + 5
    _offset_probe[(1,)](out, idx, s0, s1, s2)
    assert out.tolist() == [i * s0 + (i + 1) * s1 + (i + 2) * s2 for i in idx.tolist()]


def test_conv_offsets_past_2_31():
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
    args = (x, torch.randn(c, c, 2, 3, 3).mul(0.2).half(), torch.randn(c).half(), cache, (1, 1, 1), (1, 1, 1),
            residual)
    check_conv(conv.causal_conv3d(*args, out), args)


@pytest.mark.parametrize("C, max_block", [(384, 128), (13, 8)])
def test_norm_channel_chunks(C, max_block, monkeypatch, nan_allocations):
    """Channel counts wider than one tile take the two-loop path."""
    monkeypatch.setattr(norm, "MAX_BLOCK_C", max_block)
    x, gamma = randn(1, C, 2, 3, 5, scale=3.0, seed=C), randn(C)
    assert_backend_close("triton", norm.rms_norm_silu(x, gamma, True, 1e-12, None), oracle.rms_norm_silu(x, gamma),
                         torch_backend.rms_norm_silu(x, gamma, True, 1e-12, None))


@pytest.mark.parametrize("C, max_block", [(13, 1024), (13, 8), (384, 128)])
def test_norm_backward_programs_walk_several_row_blocks(C, max_block, monkeypatch, nan_allocations):
    """The backward's GPU tiles (not the interpreter's one big block), several row blocks per program (the last
    one past the end) and two programs' partial gamma gradients summed; with channel chunks too."""
    gpu_sizes = norm.block_sizes
    monkeypatch.setattr(norm, "block_sizes", lambda c, interpret=False, backward=False: gpu_sizes(c, False, backward))
    monkeypatch.setattr(norm, "BACKWARD_PROGRAMS", 2)
    monkeypatch.setattr(norm, "MAX_BLOCK_C", max_block)
    x, gamma, grad = randn(2, C, 5, 5, 6, scale=3.0, seed=C), randn(C, seed=1), randn(2, C, 5, 5, 6, seed=2)
    block_r = gpu_sizes(C, False, True)[0]
    assert triton.cdiv(2 * 5 * 5 * 6, block_r) >= 3  # so that some program walks more than one block
    leaves = [t.double().requires_grad_(True) for t in (x, gamma)]
    want = torch.autograd.grad(oracle.rms_norm_silu(*leaves), leaves, grad.double())
    for got, w in zip(norm.rms_norm_silu_backward(grad, x, gamma, True, 1e-12), want):
        # float32 sums of a few hundred terms: within 1e-5 of the largest gradient
        assert (got.double() - w).abs().max() <= 1e-5 * w.abs().max()


def test_attention_key_blocks_cover_a_long_sequence(nan_allocations):
    """More key blocks than query blocks: the online softmax rescales across many iterations."""
    block_n = attention.config(64, torch.float32)[1]
    q, k, v = torch.randn(1, 5 * block_n + 3, 3 * 64).mul(8 ** 0.5).split(64, dim=-1)
    assert_backend_close("triton", attention.spatial_attention(q, k, v), oracle.spatial_attention(q, k, v),
                         torch_backend.spatial_attention(q, k, v))


def test_conv_refuses_taps_beyond_32_bits():
    """The K loop adds each tap's offset in 32 bits: a frame stride that makes it wider is refused by `supports`
    (the dispatcher then takes another backend); shapes and strides only, on the meta device."""
    x = torch.empty(1, 4, 3, 2, 2, device="meta").as_strided((1, 4, 3, 2, 2), (0, 1, 2 ** 30, 8, 4))
    weight = torch.empty(4, 4, 3, 3, 3, device="meta")
    assert "2^31" in conv.supports(x, weight)
    assert conv.supports(x[:, :, :1], weight[:, :, :1]) is None
    # an NCDHW x whose channels lie 2^30 elements apart: the channel block's offset would not fit either
    x = torch.empty(1, 4, 3, 2, 2, device="meta").as_strided((1, 4, 3, 2, 2), (0, 2 ** 30, 4, 2, 1))
    assert "2^31" in conv.supports(x, weight)


def test_attention_kernel_refuses_head_dims_above_its_limit():
    """Called directly (the dispatcher never does: `supports` says why), the kernel refuses rather than
    computing a wrong result."""
    q = torch.randn(1, 4, attention.MAX_HEAD_DIM + 1)
    assert attention.supports(q, q, q)
    with pytest.raises(NotImplementedError, match="head dim"):
        attention.spatial_attention(q, q, q)


def test_float32_dots_follow_pytorchs_switches(monkeypatch):
    """float32 runs as PyTorch would on the tensor's device: convs in TF32 on CUDA while cuDNN may use it (its
    default), attention in TF32 on CUDA only when float32 matmuls may use it (not by default); IEEE on CPU (the
    interpreter, like PyTorch's CPU ops) and when the switches are off. A stand-in CUDA tensor: the choice reads
    only the dtype and the device."""
    from types import SimpleNamespace
    cuda32, cpu32 = (SimpleNamespace(dtype=torch.float32, device=torch.device(d)) for d in ("cuda", "cpu"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv._precision(cuda32) == "tf32" and conv._precision(cpu32) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert conv._precision(cuda32) == "ieee"
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert attention.precision(cuda32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert attention.precision(cuda32) == "tf32" and attention.precision(cpu32) == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)
    # each float32 choice has its compiled configuration (tests/backends/test_triton_aot.py compiles them)
    names = {case["name"] for case in attention.AOT_CASES}
    assert {f"spatial_attention D<={d} fp32{s}" for d in (64, 128, 256, 512) for s in ("", " tf32")} <= names
