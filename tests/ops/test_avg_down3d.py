"""avg_down3d (Wan2.2's AvgDown3D shortcut) on every backend against the float64 oracle (python_ref.ops): the
released model's factors and group sizes and odd ones, the zero frame in front, a pending frame in front, and the
trailing frames that do not fill a group. Tolerances: tests/helpers.py."""
import pytest
import torch

import python_ref.ops as oracle
from helpers import (BACKENDS, CL, DTYPE_IDS, DTYPES, assert_backend_close, check_gradients, randn, requiring_grad,
                     skip_unless_supported)
from python_ref.wan22_vae import AvgDown3D
from vaekernels import ops, use_backend
from vaekernels.backends import torch as torch_backend

BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)

# (C, out, factor_t, factor_s, T, H, W, cache frames, zeros)
CASES = {
    "space_2x2_group4": (16, 16, 1, 2, 3, 6, 10, 0, 0),  # stage 0: 2x2 in space
    "time_first_chunk": (8, 16, 2, 2, 1, 4, 6, 0, 1),  # stages 1, 2 on the clip's first chunk: a zero frame in front
    "time_pending_frame": (8, 16, 2, 2, 4, 4, 6, 1, 0),  # a frame waiting from the chunk before, one left over
    "time_even": (8, 16, 2, 2, 4, 2, 2, 0, 0),
    "group_across_channels": (6, 4, 2, 2, 3, 4, 2, 0, 1),  # groups of 6 span two input channels' blocks
    "group_one": (3, 12, 1, 2, 2, 4, 4, 0, 0),  # every block entry its own channel
    "identity": (5, 5, 1, 1, 2, 3, 3, 0, 0),
}


def inputs(case, dtype):
    c, out, ft, fs, t, h, w, frames, zeros = CASES[case]
    torch.manual_seed(list(CASES).index(case))
    x = randn(1, c, t, h, w, dtype=dtype)
    cache = randn(1, c, frames, h, w, dtype=dtype, channels_last=False) if frames else None
    return x, cache, zeros, ft, fs, out


def run(backend, x, cache, zeros, ft, fs, out):
    skip_unless_supported(backend, "avg_down3d", x, cache, zeros, ft, fs, out)
    with use_backend(backend):
        return ops.avg_down3d(x, cache=cache, zeros=zeros, factor_t=ft, factor_s=fs, out_channels=out)


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", list(CASES))
def test_avg_down3d(case, dtype, backend, nan_allocations):
    args = inputs(case, dtype)
    y = run(backend, *args)
    assert y.is_contiguous(memory_format=CL)
    assert_backend_close(backend, y, oracle.avg_down3d(*args), torch_backend.avg_down3d(*args))


@BACKEND
def test_whole_clip_matches_the_official_module(backend):
    """Over a whole clip of 1+2k frames, one zero frame in front is the official module's padding (it pads
    (ft - T % ft) % ft), and chunk by chunk with the pending frame carried the result is the same."""
    x = randn(1, 8, 5, 4, 6, dtype=torch.float64 if backend == "torch" else torch.float32, seed=7)
    official = AvgDown3D(8, 16, 2, 2)(x.double())
    whole = run(backend, x, None, 1, 2, 2, 16)
    first = run(backend, x[:, :, :1], None, 1, 2, 2, 16)
    rest = run(backend, x[:, :, 2:], x[:, :, 1:2], 0, 2, 2, 16)
    # float32 sums of 4 values: rounding only
    torch.testing.assert_close(whole.double(), official, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([first, rest], 2).double(), official, rtol=1e-6, atol=1e-6)


@BACKEND
def test_opcheck(backend):
    x, cache, zeros, ft, fs, out = inputs("time_pending_frame", torch.float32)
    skip_unless_supported(backend, "avg_down3d", x, cache, zeros, ft, fs, out)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.vaekernels.avg_down3d.default, requiring_grad((x, cache, zeros, ft, fs, out)))


def test_bad_arguments():
    x = torch.zeros(1, 6, 2, 4, 4)
    with pytest.raises(ValueError, match="out_channels .5. must divide"):
        ops.avg_down3d(x, factor_t=2, factor_s=2, out_channels=5)
    with pytest.raises(ValueError, match="multiples of factor_s=2"):
        ops.avg_down3d(torch.zeros(1, 6, 2, 5, 4), factor_t=1, factor_s=2, out_channels=6)
    with pytest.raises(ValueError, match="must be in .0, factor_t=2"):
        ops.avg_down3d(x, factor_t=2, factor_s=2, out_channels=6, zeros=1, cache=torch.zeros(1, 6, 1, 4, 4))


@BACKEND
@pytest.mark.parametrize("case", ["time_pending_frame", "group_across_channels"])
def test_gradients(case, backend):
    """Gradients of x and cache (recomputed on the torch backend) against the float64 oracle's."""
    x, cache, zeros, ft, fs, out = inputs(case, torch.float64)
    skip_unless_supported(backend, "avg_down3d", x.float(), None, zeros, ft, fs, out)
    op = lambda x, c: ops.avg_down3d(x, cache=c, zeros=zeros, factor_t=ft, factor_s=fs, out_channels=out)
    ref = lambda x, c: oracle.avg_down3d(x, c, zeros, ft, fs, out)
    check_gradients(backend, op, ref, (x, cache), [0] if cache is None else [0, 1])
