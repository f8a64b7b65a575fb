"""rms_norm_silu on every backend against the float64 oracle (python_ref.ops): layouts, `out` views, eps.

Tolerances: tests/helpers.py. Allocations start as NaN, and `out` buffers are NaN-poisoned.
"""
import pytest
import torch

import python_ref.ops as oracle
from helpers import (BACKENDS, CL, DTYPE_IDS, DTYPES, assert_backend_close, poisoned, randn, requiring_grad,
                     skip_unless_supported)
from vaekernels import ops, use_backend
from vaekernels.backends import torch as torch_backend

BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def run(backend, x, gamma, silu=True, out=None):
    skip_unless_supported(backend, "rms_norm_silu", x, gamma, silu, 1e-12, out)
    with use_backend(backend):
        return ops.rms_norm_silu(x, gamma, silu=silu, out=out)


def check(backend, y, x, gamma, silu):
    assert_backend_close(backend, y, oracle.rms_norm_silu(x, gamma, silu),
                         torch_backend.rms_norm_silu(x, gamma.reshape(-1), silu, 1e-12, None))


@BACKEND
@DTYPE
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "nosilu"])
@pytest.mark.parametrize("shape", [(1, 5, 3, 7, 9), (1, 13, 1, 9, 7), (2, 20, 2, 5, 3), (1, 97, 2, 3, 5),
                                   (1, 384, 2, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_rms_norm_silu(shape, silu, dtype, backend, nan_allocations):
    x, gamma = randn(*shape, dtype=dtype, scale=3.0, seed=shape[1]), randn(shape[1], dtype=dtype)
    y = run(backend, x, gamma, silu)
    check(backend, y, x, gamma, silu)
    assert y.stride() == x.stride()  # allocated in x's memory format, as the op's fake says


@BACKEND
@DTYPE
def test_into_a_conv_buffer_and_strided_views(dtype, backend):
    """Into a conv's input buffer behind 2 history frames (the model's use), and into a strided NCDHW view from an
    NCDHW input."""
    x, gamma = randn(2, 13, 3, 5, 6, dtype=dtype, scale=3.0, seed=1), randn(13, 1, 1, 1, dtype=dtype)
    buf = poisoned(2, 13, 5, 5, 6, dtype=dtype)
    assert run(backend, x, gamma, out=buf[:, :, 2:]).data_ptr() == buf[:, :, 2:].data_ptr()
    check(backend, buf[:, :, 2:], x, gamma, True)
    assert torch.isnan(buf[:, :, :2]).all(), "the history frames were touched"
    wide = poisoned(2, 13, 3, 5, 12, dtype=dtype, channels_last=False)
    run(backend, x.contiguous(), gamma, out=wide[..., ::2])
    check(backend, wide[..., ::2], x, gamma, True)
    assert torch.isnan(wide[..., 1::2]).all()


@BACKEND
@DTYPE
def test_other_layouts(dtype, backend, nan_allocations):
    gamma = randn(13, dtype=dtype, seed=2)
    for x in (randn(2, 13, 3, 5, 6, dtype=dtype, channels_last=False),  # NCTHW: positions contiguous
              randn(1, 13, 5, 7, dtype=dtype),  # an image [N, C, H, W]
              randn(2, 13, 4, 9, 12, dtype=dtype)[:, :, 1:, 1:-1, ::2]):  # no two row dims merge
        check(backend, run(backend, x, gamma), x, gamma, True)


@BACKEND
@DTYPE
def test_zero_position_and_image_gamma(dtype, backend):
    """A position whose channels are all zero meets the eps clamp (output 0); gamma may be (C,1,1)."""
    x = randn(1, 13, 2, 5, 7, dtype=dtype, seed=3)
    x[:, :, 1, 2, 3] = 0
    gamma = randn(13, 1, 1, dtype=dtype)
    y = run(backend, x, gamma, silu=False)
    check(backend, y, x, gamma, False)
    assert (y[:, :, 1, 2, 3] == 0).all()


@BACKEND
def test_opcheck(backend):
    x, gamma = randn(1, 13, 2, 3, 5, seed=4), randn(13)
    skip_unless_supported(backend, "rms_norm_silu", x, gamma, True, 1e-12, None)
    out = torch.empty(1, 13, 4, 3, 5).contiguous(memory_format=CL)[:, :, 2:]
    with use_backend(backend):
        torch.library.opcheck(torch.ops.vaekernels.rms_norm_silu.default, requiring_grad((x, gamma, True, 1e-12)))
        torch.library.opcheck(torch.ops.vaekernels.rms_norm_silu_out.default, (x, gamma, False, 1e-12, out))
        torch.library.opcheck(torch.ops.vaekernels.rms_norm_silu_backward.default,
                              (randn(*x.shape, seed=5), x, gamma, True, 1e-12))


def test_bad_arguments():
    x = torch.zeros(1, 5, 2, 4, 4)
    with pytest.raises(ValueError, match="gamma must have 5"):
        ops.rms_norm_silu(x, torch.zeros(4))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.rms_norm_silu(x, torch.zeros(5), out=torch.zeros(1, 5, 3, 4, 4))


@pytest.mark.parametrize("silu", [True, False], ids=["silu", "nosilu"])
def test_gradients(silu):
    """The op's backward (x and gamma) against finite differences (float64), against autograd through the float64
    oracle where the norm is clamped to eps (tiny positions: the kink finite differences cannot see), and in
    float32 / bfloat16 (computed in float32, rounded once to the input's dtype) against the float64 gradients."""
    x = randn(2, 5, 3, 4, 3, dtype=torch.float64, seed=7).requires_grad_(True)
    gamma = randn(5, 1, 1, 1, dtype=torch.float64, seed=8).requires_grad_(True)
    with use_backend("torch"):  # float64: the torch backend (the others run float32 and bf16 only)
        assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm_silu(a, b, silu=silu), (x, gamma))
    clamped = x.detach().clone()
    clamped[0, :, 0, 0, 0] *= 1e-14  # |x| ~ 1e-14 < eps = 1e-12
    weights = randn(*x.shape, dtype=torch.float64, seed=9)

    def grads(fn, a, b, w=weights):
        a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
        return torch.autograd.grad((fn(a, b).double() * w).sum(), (a, b))

    want = grads(lambda a, b: oracle.rms_norm_silu(a, b, silu), clamped, gamma)
    with use_backend("torch"):
        got = grads(lambda a, b: ops.rms_norm_silu(a, b, silu=silu), clamped, gamma)
    for g, w in zip(got, want):  # the same formula in float64: rounding only
        assert (g - w).abs().max() <= 1e-12 * w.abs().max()
    # float32: sums of a few products, far under 1e-5 of the largest gradient; bfloat16: against the oracle at the
    # same rounded inputs and incoming gradient (the output's dtype), the float32 gradients are rounded once to
    # bfloat16: half a step (2^-9) of each value, at most 2^-8 of the largest
    for dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2.0 ** -8)):
        xd, gd, wd = x.to(dtype), gamma.to(dtype), weights.to(dtype).double()
        got = grads(lambda a, b: ops.rms_norm_silu(a, b, silu=silu), xd, gd)
        want = grads(lambda a, b: oracle.rms_norm_silu(a, b, silu), xd.double(), gd.double(), wd)
        for g, w, name in zip(got, want, ("x", "gamma")):
            assert g.dtype == dtype
            assert (g.double() - w).abs().max() <= rel * w.abs().max(), (dtype, name)


def backward(backend, grad, x, gamma, silu):
    skip_unless_supported(backend, "rms_norm_silu_backward", grad, x, gamma, silu, 1e-12)
    with use_backend(backend):
        return torch.ops.vaekernels.rms_norm_silu_backward(grad, x, gamma, silu, 1e-12)


def check_backward(backend, got, grad, x, gamma, silu):
    """Both gradients against autograd through the float64 oracle at the same (rounded) inputs: float32 sums of a
    few hundred terms, within 1e-5 of the largest gradient; 16-bit results are float32 sums rounded once to the
    dtype: half a step (2^-9 in bf16) of each value, at most 2^-8 of the largest (a whole step, 2^-7, from Triton's
    interpreter, whose bf16 stores truncate)."""
    leaves = [t.detach().double().requires_grad_(True) for t in (x, gamma)]
    want = torch.autograd.grad(oracle.rms_norm_silu(*leaves, silu), leaves, grad.double())
    rel = 1e-5 if x.dtype == torch.float32 else 2.0 ** -7 if backend == "triton" else 2.0 ** -8
    for g, w, name in zip(got, want, ("x", "gamma")):
        assert g.dtype == x.dtype and g.shape == w.shape, name
        assert not torch.isnan(g).any(), f"NaN in {name}'s gradient: an element was never written"
        assert (g.double() - w).abs().max() <= rel * w.abs().max(), name


@BACKEND
@DTYPE
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "nosilu"])
@pytest.mark.parametrize("shape", [(2, 13, 3, 5, 6), (1, 97, 2, 3, 5), (1, 384, 2, 5, 7), (1, 5, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_backward_kernels(shape, silu, dtype, backend, nan_allocations):
    """The fused backward of every backend (one pass for both gradients), a position clamped to eps among them."""
    x, gamma = randn(*shape, dtype=dtype, scale=3.0, seed=shape[1]), randn(shape[1], dtype=dtype, seed=1)
    x[0, :, 0, 0, 0] = (x[0, :, 0, 0, 0].double() * 1e-14).to(dtype)  # |x| < eps there
    grad = randn(*shape, dtype=dtype, seed=2)
    got = backward(backend, grad, x, gamma, silu)
    check_backward(backend, got, grad, x, gamma, silu)
    assert got[0].stride() == x.stride()  # in x's memory format, as the fake says


@BACKEND
@DTYPE
def test_backward_layouts(dtype, backend, nan_allocations):
    """A broadcast gradient (of a sum: stride 0), an NCTHW x with a channels-last gradient, an image, and rows no
    two of whose dims merge."""
    gamma = randn(13, 1, 1, 1, dtype=dtype, seed=3)
    x = randn(2, 13, 3, 5, 6, dtype=dtype, seed=4)
    check_backward(backend, backward(backend, torch.ones(()).to(dtype).expand(x.shape), x, gamma, True),
                   torch.ones(x.shape, dtype=dtype), x, gamma, True)
    xn = x.contiguous()
    got = backward(backend, randn(*x.shape, dtype=dtype, seed=5), xn, gamma, True)
    check_backward(backend, got, randn(*x.shape, dtype=dtype, seed=5), xn, gamma, True)
    assert got[0].is_contiguous()
    image, g2 = randn(1, 13, 5, 7, dtype=dtype, seed=6), randn(13, dtype=dtype, seed=7)
    check_backward(backend, backward(backend, randn(1, 13, 5, 7, dtype=dtype, seed=8), image, g2, False),
                   randn(1, 13, 5, 7, dtype=dtype, seed=8), image, g2, False)
    xs = randn(2, 13, 4, 9, 12, dtype=dtype, seed=9)[:, :, 1:, 1:-1, ::2]
    grad = randn(*xs.shape, dtype=dtype, seed=10)
    check_backward(backend, backward(backend, grad, xs, gamma, True), grad, xs, gamma, True)
