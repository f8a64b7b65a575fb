"""The Triton spatial_attention (flash attention forward) kernel, run by the Triton interpreter on CPU.

Oracle: softmax(q k^T / sqrt(D)) v written out in float64. Tolerance rule (house style): the
kernel's max error is at most twice plain PyTorch's (scaled_dot_product_attention in the same
dtype), plus one rounding step of the dtype at the output's magnitude (bf16: the interpreter's
truncating fp32->bf16 store; fp32: a floor). The interpreter computes bf16 in float32 (its bf16
arithmetic is wrong), so these tests check the algorithm, masks and strides; the bf16 tensor-core
path itself is checked by compilation (test_triton_aot.py) and on a GPU (benchmarks/bench_gpu.py).
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

from vaekernels import ops, use_backend

kernel_module = importlib.import_module("vaekernels.backends.triton.spatial_attention")
triton_backend = importlib.import_module("vaekernels.backends.triton")

ULP = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7}


def oracle(q, k, v):
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v


def check(o, q, k, v):
    expected = oracle(q, k, v)
    err = (o.double() - expected).abs().max().item()
    ref_err = (F.scaled_dot_product_attention(q, k, v).double() - expected).abs().max().item()
    # 2x plain PyTorch's error + one rounding step at the largest magnitude (see module doc)
    tol = 2 * ref_err + ULP[q.dtype] * expected.abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g} (plain PyTorch {ref_err:.3g})"


def qkv_views(n, length, d, dtype):
    """q, k, v as the model passes them: column slices of one [N, L, 3D] tensor (row stride 3D).
    Scaled so the softmax is far from uniform."""
    rows = torch.randn(n, length, 3 * d).mul(d ** 0.25).to(dtype)
    return rows.split(d, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, length, d", [(2, 37, 64), (1, 77, 384), (1, 1, 64), (1, 20, 13)])
def test_parity(n, length, d, dtype, nan_allocations):
    q, k, v = qkv_views(n, length, d, dtype)
    o = triton_backend.spatial_attention(q, k, v)
    assert o.shape == q.shape and o.is_contiguous()
    check(o, q, k, v)


def test_key_blocks_cover_a_long_sequence(nan_allocations):
    """More key blocks than query blocks: the online softmax rescales across many iterations."""
    block_n = kernel_module.config(64, torch.float32)[1]
    q, k, v = qkv_views(1, 5 * block_n + 3, 64, torch.float32)
    check(triton_backend.spatial_attention(q, k, v), q, k, v)


def test_contiguous_inputs(nan_allocations):
    q, k, v = (t.contiguous() for t in qkv_views(2, 37, 64, torch.float32))
    check(triton_backend.spatial_attention(q, k, v), q, k, v)


def test_head_dim_limit():
    q = torch.randn(1, 4, kernel_module.MAX_HEAD_DIM + 1)
    with pytest.raises(NotImplementedError, match="head dim"):
        triton_backend.spatial_attention(q, q, q)


def test_opcheck():
    q, k, v = qkv_views(2, 37, 64, torch.float32)
    with use_backend("triton"):
        torch.library.opcheck(torch.ops.vaekernels.spatial_attention.default, (q, k, v))
        check(ops.spatial_attention(q, k, v), q, k, v)
