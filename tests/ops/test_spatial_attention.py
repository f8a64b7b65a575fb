"""spatial_attention on every backend against the float64 oracle (python_ref.ops), at the head dims of both Wan
VAEs (384; 640 and 1024, which the Triton kernel leaves to another backend) and odd ones.

q, k, v are column slices of one [N, L, 3D] tensor, as the attention block passes them. Tolerances:
tests/helpers.py (the interpreter computes bf16 in float32: the bf16 tensor-core path itself is checked by
compilation, test_triton_aot.py, and on a GPU by benchmarks/bench_gpu.py).
"""
import pytest
import torch

import python_ref.ops as oracle
from helpers import BACKENDS, DTYPE_IDS, DTYPES, assert_backend_close, skip_unless_supported
from vaekernels import BackendUnavailable, ops, use_backend
from vaekernels.backends import reason
from vaekernels.backends import torch as torch_backend

BACKEND = pytest.mark.parametrize("backend", BACKENDS)
DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)


def qkv(n, length, d, dtype, seed=0):
    """Column slices of one [N, L, 3D] tensor (row stride 3D), scaled so the softmax is far from uniform."""
    torch.manual_seed(seed)
    return torch.randn(n, length, 3 * d).mul(d ** 0.25).to(dtype).split(d, dim=-1)


def run(backend, q, k, v):
    skip_unless_supported(backend, "spatial_attention", q, k, v)
    with use_backend(backend):
        return ops.spatial_attention(q, k, v)


def check(backend, o, q, k, v):
    assert_backend_close(backend, o, oracle.spatial_attention(q, k, v), torch_backend.spatial_attention(q, k, v))


@BACKEND
@DTYPE
@pytest.mark.parametrize("n, length, d", [(2, 37, 64), (1, 77, 384), (1, 1, 64), (1, 20, 13), (1, 9, 640),
                                          (2, 6, 1024)])
def test_spatial_attention(n, length, d, dtype, backend, nan_allocations):
    q, k, v = qkv(n, length, d, dtype, seed=d)
    o = run(backend, q, k, v)
    assert o.shape == q.shape
    check(backend, o, q, k, v)


@BACKEND
@DTYPE
@pytest.mark.parametrize("n, length, keys, d", [(2, 13, 37, 64), (1, 40, 7, 384), (1, 5, 9, 640)])
def test_keys_from_other_positions(n, length, keys, d, dtype, backend, nan_allocations):
    """Queries of some positions (a band of a frame's rows) against the keys and values of others (the whole frame)."""
    q = qkv(n, length, d, dtype, seed=d)[0]
    _, k, v = qkv(n, keys, d, dtype, seed=d + 1)
    o = run(backend, q, k, v)
    assert o.shape == q.shape
    check(backend, o, q, k, v)


@BACKEND
def test_contiguous_inputs(backend, nan_allocations):
    q, k, v = (t.contiguous() for t in qkv(2, 37, 64, torch.float32))
    check(backend, run(backend, q, k, v), q, k, v)


def test_head_dims_beyond_the_triton_kernel_fall_back():
    """The Triton kernel takes head dims up to 512: it says so for 640 and 1024 (Wan2.2's), so `auto` passes it
    over (on CUDA, to the torch backend) and an explicit request raises with that reason."""
    q, k, v = qkv(1, 4, 640, torch.float32)
    why = reason("triton", "spatial_attention", q, k, v)
    assert why and "head dims up to 512, got 640" in why
    assert "head dim" not in (reason("triton", "spatial_attention", *qkv(1, 4, 384, torch.float32)) or "")
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="head dims up to 512"):
        ops.spatial_attention(q, k, v)


@BACKEND
def test_opcheck(backend):
    q, k, v = qkv(2, 37, 64, torch.float32)
    skip_unless_supported(backend, "spatial_attention", q, k, v)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.vaekernels.spatial_attention.default, (q, k, v))


def test_bad_arguments():
    for q, k, v in [((1, 2, 3), (1, 2, 3), (1, 3, 3)), ((1, 2, 3), (1, 4, 2), (1, 4, 2)),
                    ((1, 2, 3), (2, 4, 3), (2, 4, 3)), ((1, 2, 3), (1, 0, 3), (1, 0, 3))]:
        with pytest.raises(ValueError, match="q must be \\[N, L, D\\] and k, v equal"):
            ops.spatial_attention(torch.zeros(q), torch.zeros(k), torch.zeros(v))


def test_gradients():
    """The backward (SDPA recomputed) against finite differences in float64, and in float32 against the float64
    oracle's gradients; inputs that do not require grad get none."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 7, 12, dtype=torch.float64, generator=gen).requires_grad_(True) for _ in range(3))
    with use_backend("torch"):  # float64: the torch backend
        assert torch.autograd.gradcheck(ops.spatial_attention, (q, k, v))
    weights = torch.randn(2, 7, 12, dtype=torch.float64, generator=gen)
    want = torch.autograd.grad((oracle.spatial_attention(q, k, v) * weights).sum(), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    got = torch.autograd.grad((ops.spatial_attention(q32, k32, v32).double() * weights).sum(), (q32, k32, v32))
    for g, w in zip(got, want):  # float32 softmax and two small matmuls: far under 1e-5 of the largest gradient
        assert g.dtype == torch.float32 and (g.double() - w).abs().max() <= 1e-5 * w.abs().max()
    frozen = k32.detach()
    g_q, = torch.autograd.grad(ops.spatial_attention(q32, frozen, v32.detach()).sum(), (q32,))
    assert g_q.shape == q32.shape
