"""dup_up3d (Wan2.2's DupUp3D shortcut) on every backend against the float64 oracle (python_ref.ops), and the
official module's definition, with the first-chunk trim. It only moves values: every backend must be exact."""
import pytest
import torch

import python_ref.ops as oracle
from helpers import BACKENDS, CL, DTYPE_IDS, DTYPES, check_gradients, randn, requiring_grad, skip_unless_supported
from python_ref.wan22_vae import DupUp3D
from vaekernels import ops, use_backend

BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)

# (C, out, factor_t, factor_s, T, h, w, drop)
CASES = {
    "time_space_repeat8_first": (16, 16, 2, 2, 2, 3, 5, 1),  # stages 0, 1 on the clip's first chunk
    "time_space_repeat8": (16, 16, 2, 2, 3, 3, 5, 0),
    "space_repeat2": (16, 8, 1, 2, 2, 4, 3, 0),  # stage 2: halves the channels
    "repeat3": (4, 6, 1, 2, 1, 2, 3, 0),  # repeats that straddle block entries
    "time_only": (5, 5, 2, 1, 3, 2, 2, 1),
}


def inputs(case, dtype):
    c, out, ft, fs, t, h, w, drop = CASES[case]
    return randn(1, c, t, h, w, dtype=dtype, seed=list(CASES).index(case)), ft, fs, out, drop


def run(backend, x, ft, fs, out, drop):
    skip_unless_supported(backend, "dup_up3d", x, ft, fs, out, drop)
    with use_backend(backend):
        return ops.dup_up3d(x, factor_t=ft, factor_s=fs, out_channels=out, drop=drop)


@BACKEND
@DTYPE
@pytest.mark.parametrize("case", list(CASES))
def test_dup_up3d(case, dtype, backend, nan_allocations):
    args = inputs(case, dtype)
    y = run(backend, *args)
    assert y.is_contiguous(memory_format=CL) and y.dtype == dtype
    assert torch.equal(y.double(), oracle.dup_up3d(*args))  # values moved, never computed
    y_ncdhw = run(backend, args[0].contiguous(), *args[1:])
    assert y_ncdhw.is_contiguous() and torch.equal(y_ncdhw.double(), oracle.dup_up3d(*args))


@pytest.mark.parametrize("case", ["time_space_repeat8_first", "space_repeat2", "repeat3"])
def test_oracle_is_the_official_module(case):
    x, ft, fs, out, drop = inputs(case, torch.float64)
    official = DupUp3D(x.shape[1], out, ft, fs)(x, first_chunk=drop > 0)
    assert torch.equal(oracle.dup_up3d(x, ft, fs, out, drop), official)


@BACKEND
def test_opcheck(backend):
    x, ft, fs, out, drop = inputs("time_space_repeat8_first", torch.float32)
    skip_unless_supported(backend, "dup_up3d", x, ft, fs, out, drop)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.vaekernels.dup_up3d.default, (x, ft, fs, out, drop))
        torch.library.opcheck(torch.ops.vaekernels.dup_up3d.default, requiring_grad((x, ft, fs, out, drop)))


def test_bad_arguments():
    x = torch.zeros(1, 6, 2, 4, 4)
    with pytest.raises(ValueError, match="C .6. must divide"):
        ops.dup_up3d(x, factor_t=1, factor_s=2, out_channels=5)
    with pytest.raises(ValueError, match="drop must be in"):
        ops.dup_up3d(x, factor_t=2, factor_s=2, out_channels=6, drop=5)


@BACKEND
@pytest.mark.parametrize("case", ["time_space_repeat8_first", "repeat3"])
def test_gradients(case, backend):
    """Gradient of x (recomputed on the torch backend) against the float64 oracle's."""
    x, ft, fs, out, drop = inputs(case, torch.float64)
    skip_unless_supported(backend, "dup_up3d", x.float(), ft, fs, out, drop)
    op = lambda x: ops.dup_up3d(x, factor_t=ft, factor_s=fs, out_channels=out, drop=drop)
    check_gradients(backend, op, lambda x: oracle.dup_up3d(x, ft, fs, out, drop), (x,), [0])
