"""upsample_conv2d on every backend against the float64 oracle (python_ref.ops), with and without the residual
(Wan2.2's upsamplers add their stage's shortcut there). Tolerances: tests/helpers.py."""
import pytest
import torch

import python_ref.ops as oracle
from helpers import (BACKENDS, CL, DTYPE_IDS, DTYPES, assert_backend_close, check_gradients, randn, requiring_grad,
                     skip_unless_supported)
from vaekernels import ops, use_backend
from vaekernels.backends import torch as torch_backend

BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def run(backend, x, weight, bias, residual=None):
    skip_unless_supported(backend, "upsample_conv2d", x, weight, bias, residual)
    with use_backend(backend):
        return ops.upsample_conv2d(x, weight, bias, residual=residual)


def check(backend, y, x, weight, bias, residual=None):
    assert_backend_close(backend, y, oracle.upsample_conv2d(x, weight, bias, residual),
                         torch_backend.upsample_conv2d(x, weight, bias, residual))


# in bf16 on the C++ backend without AMX, the 34x38 output runs as Winograd F(4x4, 3x3) and the 66x70 one as
# F(6x6, 3x3) (reading x upsampled in place); the rest as four 2x2 phase convs
SHAPES = [(13, 5, 1, 7, 9, True), (20, 13, 3, 5, 3, False), (26, 13, 2, 1, 6, True), (16, 24, 2, 17, 19, True),
          (16, 24, 1, 33, 35, False), (5, 13, 1, 3, 1, False)]


@BACKEND
@DTYPE
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("cin,cout,t,h,w,has_bias", SHAPES)
def test_upsample_conv2d(cin, cout, t, h, w, has_bias, residual, dtype, backend, nan_allocations):
    torch.manual_seed(cin * 7 + h)
    x = randn(1, cin, t, h, w, dtype=dtype)
    weight = randn(cout, cin, 3, 3, dtype=dtype, scale=(9 * cin) ** -0.5)
    bias = randn(cout, dtype=dtype) if has_bias else None
    r = randn(1, cout, t, 2 * h, 2 * w, dtype=dtype) if residual else None
    y = run(backend, x, weight, bias, r)
    assert y.is_contiguous(memory_format=CL)
    check(backend, y, x, weight, bias, r)
    y_ncdhw = run(backend, x.contiguous(), weight, bias, r)
    assert y_ncdhw.is_contiguous()
    check(backend, y_ncdhw, x, weight, bias, r)


@BACKEND
def test_opcheck(backend):
    x, weight, bias = randn(1, 13, 2, 5, 7, seed=1), randn(5, 13, 3, 3), randn(5)
    residual = randn(1, 5, 2, 10, 14)
    skip_unless_supported(backend, "upsample_conv2d", x, weight, bias, residual)
    with use_backend(backend):
        for r in (None, residual):
            torch.library.opcheck(torch.ops.vaekernels.upsample_conv2d.default, (x, weight, bias, r))
            torch.library.opcheck(torch.ops.vaekernels.upsample_conv2d.default, requiring_grad((x, weight, bias, r)))


def test_bad_arguments():
    x = torch.zeros(1, 5, 2, 4, 4)
    with pytest.raises(ValueError, match="weight must be"):
        ops.upsample_conv2d(x, torch.zeros(3, 4, 3, 3))
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        ops.upsample_conv2d(x, torch.zeros(3, 5, 3, 3), residual=torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"bias must be \[3\], got \(5,\)"):
        ops.upsample_conv2d(x, torch.zeros(3, 5, 3, 3), torch.zeros(5))
    with pytest.raises(ValueError, match=r"residual must be torch.float32 on cpu, as x is; got torch.bfloat16"):
        ops.upsample_conv2d(x, torch.zeros(3, 5, 3, 3), residual=torch.zeros(1, 3, 2, 8, 8, dtype=torch.bfloat16))


@BACKEND
@pytest.mark.parametrize("has_bias,has_residual", [(True, True), (False, False)])
def test_gradients(has_bias, has_residual, backend):
    """Gradients of x, weight, bias and residual (the one-tap conv's gradient ops, ops/upsample_conv2d.py) against the
    float64 oracle's."""
    x, weight = randn(1, 5, 2, 3, 4, dtype=torch.float64, seed=4), randn(7, 5, 3, 3, dtype=torch.float64, scale=0.2)
    bias = randn(7, dtype=torch.float64) if has_bias else None
    residual = randn(1, 7, 2, 6, 8, dtype=torch.float64) if has_residual else None
    skip_unless_supported(backend, "upsample_conv2d", x.float(), weight.float(), None, None)
    args = (x, weight, bias, residual)
    op = lambda x, w, b, r: ops.upsample_conv2d(x, w, b, residual=r)
    # no finite differences: the plain backend upsamples in float32 as the official code does, so a float64 input
    # is rounded there and gradcheck's steps of 1e-6 vanish; the float32 gradients are checked against the oracle's
    check_gradients(backend, op, oracle.upsample_conv2d, args, [i for i, a in enumerate(args) if a is not None],
                    finite_differences=False)


@BACKEND
def test_gradients_of_wider_convs(backend):
    """As above with 16 input and 12 output channels on odd frame sizes, where the C++ backward runs its Winograd
    data and weight gradients (8+ channels), with bias and residual."""
    x, weight = randn(2, 16, 2, 5, 7, dtype=torch.float64, seed=5), randn(12, 16, 3, 3, dtype=torch.float64, scale=0.1)
    args = (x, weight, randn(12, dtype=torch.float64), randn(2, 12, 2, 10, 14, dtype=torch.float64))
    skip_unless_supported(backend, "upsample_conv2d", x.float(), weight.float(), None, None)
    op = lambda x, w, b, r: ops.upsample_conv2d(x, w, b, residual=r)
    check_gradients(backend, op, oracle.upsample_conv2d, args, [0, 1, 2, 3], finite_differences=False)
