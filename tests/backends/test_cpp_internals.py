"""The C++ CPU backend's own paths, beyond the op semantics every backend is tested for (tests/ops/): the Winograd
and brgemm cuts at sizes that make them take effect, the derived-weight cache, the CPU block pool, the bf16 paths of
CPUs without AMX, and the registration of its ops.

Results are checked against the float64 oracle (python_ref.ops) with the C++ backend's tolerance
(tests/helpers.py); outputs written through ``out=`` start as NaN, so an element the kernel never wrote fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import python_ref.ops as oracle
from helpers import CL, assert_backend_close, poisoned, randn
from vaekernels import BackendUnavailable, envs, ops, use_backend
from vaekernels.backends import cpp, memory_path, reason
from vaekernels.backends import torch as torch_backend

if cpp.supports("causal_conv3d", torch.zeros(1)):
    pytest.skip(cpp.supports("causal_conv3d", torch.zeros(1)), allow_module_level=True)
from vaekernels import _C  # noqa: E402

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def conv_oracle(x, weight, bias, cache, stride, padding, residual):
    return oracle.causal_conv3d(x, weight, bias, cache, stride, padding, residual)


def check(y, args):
    assert_backend_close("cpp", y, conv_oracle(*args), torch_backend.causal_conv3d(*args, None))


@DTYPES
@pytest.mark.parametrize("h,w", [(47, 85), (67, 71)])
@pytest.mark.parametrize("batch,frames,cache_frames,cout", [(2, 9, 2, 40), (1, 6, 0, 40), (3, 1, 1, 40), (1, 5, 2, 3)])
def test_causal_conv3d_winograd_blocks(batch, frames, cache_frames, cout, h, w, dtype):
    """3x3x3 convs with 8+ input channels (any output count: 3 is the RGB head) run as Winograd in blocks of
    tiles x output frames (F(2x2, 3x3) in float32; for bfloat16, F(4x4, 3x3) on the 47x85 plane and F(6x6, 3x3) on
    the 67x71 one; the small shapes above test bf16's F(2x2, 3x3); bf16 only where AMX is absent or hidden, else
    oneDNN): odd H and W (part-filled edge tiles), several tile and frame blocks (24 x 43 and 34 x 36 tiles of 2x2,
    12 x 22 and 12 x 12 of 4x4 or 6x6: more than one block of tiles at these channel counts), a batch, zero frames in
    front, a residual, and `out` as every other frame of a buffer (dense channels, strided frames: written in place)."""
    torch.manual_seed(batch * 100 + frames)
    cin = 24
    buf = randn(batch, cin, cache_frames + frames, h, w, dtype=dtype)
    cache, x = (buf[:, :, :cache_frames], buf[:, :, cache_frames:]) if cache_frames else (None, buf)
    weight = randn(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5).contiguous()
    bias = randn(cout, dtype=dtype)
    residual = randn(batch, cout, frames, h, w, dtype=dtype)
    args = (x, weight, bias, cache, (1, 1, 1), (1, 1, 1), residual)
    check(cpp.causal_conv3d(*args, None), args)
    out_buf = poisoned(batch, cout, 2 * frames, h, w, dtype=dtype)
    cpp.causal_conv3d(*args, out_buf[:, :, 1::2])
    check(out_buf[:, :, 1::2], args)
    assert torch.isnan(out_buf[:, :, 0::2]).all(), "wrote outside out"


@pytest.mark.parametrize("dtype,h,w", [(torch.float32, 18, 20), (torch.bfloat16, 32, 36)], ids=["fp32", "bf16"])
def test_causal_conv3d_winograd_many_channels(dtype, h, w):
    """384 channels on a small plane: the Winograd blocks that fit in L2 would be too small, so V and M of all
    tiles go through memory (GEMMs in chunks of 64 tiles; here 90 and 72 tiles, F(2x2) and F(4x4) for bf16),
    over a batch of 2, one zero frame and one cache frame, with a residual."""
    torch.manual_seed(h)
    c = 384
    cache, x = randn(2, c, 1, h, w, dtype=dtype), randn(2, c, 1, h, w, dtype=dtype)
    weight = randn(c, c, 3, 3, 3, dtype=dtype, scale=(27 * c) ** -0.5).contiguous()
    args = (x, weight, randn(c, dtype=dtype), cache, (1, 1, 1), (1, 1, 1), randn(2, c, 1, h, w, dtype=dtype))
    check(cpp.causal_conv3d(*args, None), args)


# (cin, cout, frames, H, W) of the two ways the Winograd GEMMs are cut up beyond one block of tiles x frames:
# - per tap and column block: where a point's slice of the transformed weight (kt * Cin x Cout) would not stay in L2,
#   its GEMMs take one tap at a time, and columns in blocks when one tap's slice is still too large: 272 -> 264
#   channels, two uneven blocks of output columns (144 + 120), in blocks of tiles x 4 frames that fit the scratch
#   (36 tiles in blocks of 12 or 18 for a scratch of 2 or 4 MiB, 8 frames in 2 blocks);
# - groups of tiles: where V and M of many tiles go through memory (few tile-frames per block: many input channels),
#   they do so in groups of tiles of up to 16 MiB, so that large planes keep the memory bounded: 640 -> 8 channels,
#   289 tiles in float32 as groups of 135, 135 and 19, 81 in bf16 (F(4x4)) as 60 and 21.
GEMM_CUTS = {"per_tap_and_column_block": (272, 264, 8, 12, 12), "groups_of_tiles": (640, 8, 1, 34, 34)}


@DTYPES
@pytest.mark.parametrize("cut", list(GEMM_CUTS))
def test_causal_conv3d_winograd_gemm_cuts(cut, dtype):
    """The cuts above, each with a cache frame apart and a residual."""
    cin, cout, frames, h, w = GEMM_CUTS[cut]
    torch.manual_seed(cin)
    cache, x = randn(1, cin, 1, h, w, dtype=dtype), randn(1, cin, frames, h, w, dtype=dtype)
    weight = randn(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5).contiguous()
    args = (x, weight, randn(cout, dtype=dtype), cache, (1, 1, 1), (1, 1, 1), randn(1, cout, frames, h, w, dtype=dtype))
    check(cpp.causal_conv3d(*args, None), args)


def test_causal_conv3d_notices_a_changed_weight():
    """The packed weight is cached per weight tensor; an in-place update must rebuild it."""
    buf = randn(1, 13, 5, 7, 9, seed=1)
    weight = randn(13, 13, 3, 3, 3, scale=(27 * 13) ** -0.5, channels_last=False)
    args = (buf[:, :, 2:], weight, randn(13), buf[:, :, :2], (1, 1, 1), (1, 1, 1), randn(1, 13, 3, 7, 9))
    before = cpp.causal_conv3d(*args, None)
    with torch.no_grad():
        weight.mul_(-0.5)
    after = cpp.causal_conv3d(*args, None)
    check(after, args)
    assert not torch.allclose(before, after)


@DTYPES
def test_causal_conv3d_weight_packed_per_input_shape(dtype):
    """oneDNN's weight layout depends on the input's shape, so the packed weight is kept per shape (variants
    with the same bytes share one), a few per weight: more shapes than are kept, visited twice over, all give
    the oracle's result. 5 input channels: oneDNN's conv on every CPU."""
    weight = randn(13, 5, 3, 3, 3, dtype=dtype, scale=(27 * 5) ** -0.5, channels_last=False, seed=2)
    bias = randn(13, dtype=dtype)
    for t in [1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1]:
        case = (randn(1, 5, t, 7, 9, dtype=dtype), weight, bias, None, (1, 1, 1), (1, 1, 1), None)
        check(cpp.causal_conv3d(*case, None), case)


@DTYPES
def test_causal_conv3d_steady_state_converts_no_weight(dtype, capfd):
    """After a first call per input shape, a conv converts no weight: a 384-channel conv whose oneDNN layout
    differs between 2 and 4 output frames on AMX (output channels in blocks of 32 or 48), called with both
    (oneDNN's verbose log lists every conversion; 150 ms per call for this weight in bf16 when it happened)."""
    c = 384
    weight = randn(c, c, 3, 3, 3, dtype=dtype, scale=(27 * c) ** -0.5).contiguous()
    inputs = [randn(1, c, t, 32, 32, dtype=dtype) for t in (4, 6)]
    for x in inputs:
        cpp.causal_conv3d(x, weight, None, None, (1, 1, 1), (0, 1, 1), None, None)
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for x in inputs:
            cpp.causal_conv3d(x, weight, None, None, (1, 1, 1), (0, 1, 1), None, None)
    log = capfd.readouterr().out
    assert not [line for line in log.splitlines() if ",reorder," in line and "384x384x3x3x3" in line], log


# ---------------------------------------------------------------------------------------------
# memory_pool (csrc/cpu_pool.cpp)
# ---------------------------------------------------------------------------------------------
def test_memory_pool_reuses_blocks_within_a_span():
    """Inside a span a freed block of 1 MiB or more goes to the next allocation of its size. Tensors made in
    a span stay valid after it and are freed correctly later; spans nest; oneDNN's raw blocks and small
    tensors (torch's allocator) are freed correctly in and out of spans."""
    n = 1 << 20  # float32: 4 MiB
    x = torch.randn(1, 16, 40, 40).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3)
    expected = F.conv2d(x, w, padding=1)
    with cpp.memory_pool():
        a = torch.empty(n)
        freed = a.data_ptr()
        del a
        b = torch.empty(n)
        assert b.data_ptr() == freed, "a same-size block was not reused inside the span"
        kept = torch.arange(n, dtype=torch.float32)
        small = torch.ones(10)
        with cpp.memory_pool():
            y = F.conv2d(x, w, padding=1)
        torch.testing.assert_close(y, expected)
    assert torch.equal(kept, torch.arange(n, dtype=torch.float32)) and small.sum().item() == 10
    del b, kept, small  # freed after the span
    torch.testing.assert_close(F.conv2d(x, w, padding=1), expected)


def _resident_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_memory_pool_keeps_no_more_than_its_peak():
    """A size with no free block evicts kept blocks until kept + live bytes are within the span's peak of live
    bytes: after a freed 64 MiB block, a new 96 MiB one takes the 64 MiB's place (resident memory grows by
    about 32 MiB; keeping both would grow it by 96)."""
    mib = 1 << 20
    with cpp.memory_pool():
        a = torch.ones(64 * mib // 4)
        del a
        before = _resident_bytes()
        b = torch.ones(96 * mib // 4)
        grown = _resident_bytes() - before
        del b
    assert grown < 64 * mib, f"resident memory grew by {grown / mib:.0f} MiB: the freed block was kept"


def _huge_page_advised_mappings():
    """(start, end) of this process's mappings flagged for transparent huge pages (VmFlags "hg")."""
    spans, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                current = tuple(int(a, 16) for a in head.split("-"))
            elif head == "VmFlags:" and "hg" in line.split()[1:]:
                spans.append(current)
    return spans


HUGE_PAGE = 2 << 20


def test_memory_pool_blocks_ask_for_huge_pages():
    """A pooled block of 2 MiB or more starts on a 2 MiB boundary, and its whole huge pages are advised for huge
    pages (csrc/cpu_pool.cpp, advise_huge_pages)."""
    with cpp.memory_pool():
        a = torch.empty(3 * HUGE_PAGE // 4 + 7)  # 6 MiB and a bit: the tail is not a whole huge page
        start = a.data_ptr()
        assert start % HUGE_PAGE == 0, f"pooled block at {start:#x}, not on a 2 MiB boundary"
        assert any(lo <= start and start + 3 * HUGE_PAGE <= hi for lo, hi in _huge_page_advised_mappings()), \
            "the block's whole huge pages are not advised for huge pages"


def test_memory_pool_exit_without_enter_raises():
    from vaekernels import _C
    with pytest.raises(RuntimeError, match="exit without enter"):
        _C.cpu_pool_exit()


# ---------------------------------------------------------------------------------------------
# bf16 without AMX
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not _C.bf16_on_amx(), reason="no AMX here: this run's bf16 tests already take the brgemm paths")
def test_bf16_brgemm_paths_without_amx():
    """With AMX, bf16 convs go to oneDNN; the bf16 paths of CPUs without it (Winograd and strided convs on
    brgemm) must stay right too: rerun the bf16 op and precision tests with AMX hidden (VAEKERNELS_CPU_AMX=0)."""
    env = dict(os.environ, VAEKERNELS_CPU_AMX="0")
    # the backend hands the variable to the extension when it loads it
    probe = "from vaekernels.backends import cpp; assert not cpp._C.bf16_on_amx()"
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)
    tests = Path(__file__).parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-k", "(bf16 or bfloat16) and (cpp or precision)",
                          str(tests / "ops"), str(Path(__file__)), str(tests / "models")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]


def test_the_memory_path_of_bf16_follows_amx():
    """The memory estimate's coefficients are chosen by this name: bf16 on AMX apart, float32 never."""
    bf16 = torch.zeros(0, dtype=torch.bfloat16)
    assert memory_path(torch.zeros(0)) == "default"
    try:
        _C.allow_amx(False)
        assert memory_path(bf16) == "default"
        _C.allow_amx(True)
        assert memory_path(bf16) == ("amx" if _C.bf16_on_amx() else "default")
    finally:
        _C.allow_amx(envs.cpu_amx())


# ---------------------------------------------------------------------------------------------
# dispatch, registration
# ---------------------------------------------------------------------------------------------
def test_supports():
    x = randn(1, 5, 1, 3, 3)
    assert cpp.supports("rms_norm_silu", x) is None
    assert "float64" in cpp.supports("rms_norm_silu", x.double())
    assert "float16" in reason("cpp", "causal_conv3d", x.half())
    with use_backend("cpp"):
        ops.rms_norm_silu(x, torch.ones(5))
        with pytest.raises(BackendUnavailable, match="float64"):
            ops.rms_norm_silu(x.double(), torch.ones(5, dtype=torch.float64))


def opcheck_cases():
    x, cache = randn(1, 20, 1, 9, 7, seed=3), randn(1, 20, 2, 9, 7)
    weight, bias, residual = randn(5, 20, 3, 3, 3, scale=0.05, channels_last=False), randn(5), randn(1, 5, 1, 9, 7)
    conv_args = (x, weight, bias, cache, [1, 1, 1], [1, 1, 1], residual)
    out = torch.empty(1, 5, 1, 9, 7).contiguous(memory_format=CL)
    xn = randn(1, 13, 2, 5, 7)
    up = (randn(1, 13, 2, 5, 7), randn(5, 13, 3, 3), randn(5))
    return {
        "causal_conv3d": conv_args,
        "causal_conv3d_out": conv_args + (out,),
        "rms_norm_silu": (xn, randn(13), True, 1e-12),
        "rms_norm_silu_out": (xn, randn(13), False, 1e-12, torch.empty_like(xn)),
        "upsample_conv2d": up + (None,),
        "upsample_conv2d_residual": up + (randn(1, 5, 2, 10, 14),),
        "avg_down3d": (randn(1, 8, 4, 4, 6), randn(1, 8, 1, 4, 6), 0, 2, 2, 16),
        "dup_up3d": (randn(1, 16, 2, 3, 5), 2, 2, 16, 1),
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_opcheck(name):
    op = getattr(torch.ops.vaekernels_cpp, name.replace("_residual", "")).default
    torch.library.opcheck(op, opcheck_cases()[name])
