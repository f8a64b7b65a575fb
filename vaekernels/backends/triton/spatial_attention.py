"""Single-head flash attention forward over the positions of a frame, any head dim up to 512.

On CUDA, ``auto`` leaves every call to PyTorch's SDPA (``defer``: faster on paper); this kernel runs when asked
for (``use_backend("triton")``) and under the interpreter.
Above 512 (Wan2.2's 640 and 1024) ``supports`` says so and the dispatcher takes another backend: a 32 x 1024
float32 accumulator per program does not fit the registers, and a split over the head dim would re-read q and
k once per slice (recomputing the scores) for a block whose FLOPs are a small share of the model's.

Online softmax over key blocks (no L x L matrix exists), float32 statistics and accumulator.
The head dim is one tile padded to a power of two and masked, so q is read once and each
key/value block once per query block. Head dim 384 (the model's) pads to 512; its tiles are
chosen so that q, k and v tiles fit shared memory and the 32x512 float32 accumulator fits registers
(checked by compiling for sm_80 and sm_90: tests/test_triton_aot.py). bf16/fp16 operands go
to tensor cores; float32 follows PyTorch's switch for float32 matmuls: IEEE dots by default (as PyTorch's),
TF32 on tensor cores when ``torch.get_float32_matmul_precision()`` is not "highest" (on CUDA).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import interpreted, is_recording, launch

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 512

# (BLOCK_M, BLOCK_N, num_warps, num_stages) by padded head dim: the largest tiles found to compile
# without spills on sm_80 and sm_90 under Triton 3.6 (the GPU machine's) and 3.9 (see the module doc). float32 "ieee" dots run on FMA units,
# which hold a whole row of q per thread, hence the small tiles; "tf32" dots take tensor cores with
# 4-byte operands (twice the shared memory of 16-bit ones per tile)
_CONFIGS = {
    "16bit": {64: (64, 64, 4, 3), 128: (64, 32, 4, 2), 256: (64, 16, 8, 2), 512: (32, 16, 8, 1)},
    "tf32": {64: (64, 32, 4, 2), 128: (64, 32, 8, 1), 256: (32, 32, 8, 1), 512: (16, 16, 8, 1)},
    "fp32": {64: (16, 16, 4, 1), 128: (16, 16, 4, 1), 256: (16, 16, 4, 1), 512: (16, 16, 4, 1)},
}


# the sequence lengths vary with the frame size: not specialised on
@triton.jit(do_not_specialize=["L", "LK"])
def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, sqn, sql, sqd, skn, skl, skd, svn, svl, svd, son, sol, sod,
                      L, LK, D, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """o = softmax(q k^T / sqrt(D)) v for one block of BLOCK_M queries of one sequence.

    q_ptr, o_ptr: [N, L, D], k_ptr, v_ptr: [N, LK, D], any strides (s*n, s*l, s*d); grid (cdiv(L, BLOCK_M), N).
    qk_scale = log2(e) / sqrt(D) (the softmax runs in base 2). UPCAST: compute in float32
    (the interpreter, whose bf16 arithmetic is wrong). PRECISION: of float32 dots, "ieee" or "tf32".
    """
    n = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(q_ptr + n * sqn + rows[:, None] * sql + offs_d[None, :] * sqd,
                mask=(rows < L)[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, LK, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < LK
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + n * skn + cols[:, None] * skl + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + n * svn + cols[:, None] * svl + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + n * son + rows[:, None] * sol + offs_d[None, :] * sod, out.to(o_ptr.dtype.element_ty),
             mask=(rows < L)[:, None] & d_ok[None, :])


def precision(q):
    """float32 dots as PyTorch's float32 matmuls on ``q``'s device: IEEE unless TF32 is allowed (on CUDA); 16-bit
    dots ignore it."""
    if q.dtype == torch.float32 and q.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def config(D, dtype, dots="ieee"):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) for head dim D, the operands' dtype and float32's dots."""
    block_d = max(64, triton.next_power_of_2(D))
    table = _CONFIGS["16bit" if dtype != torch.float32 else "tf32" if dots == "tf32" else "fp32"]
    return (*table[block_d][:2], block_d, *table[block_d][2:])


def defer(q, k, v):
    """On CUDA, ``auto`` takes PyTorch's SDPA for every head dim, on paper (no GPU has timed either): up to 256 its
    flash kernel (FlashAttention-2: 128-row tiles, warp-specialised pipelining) outruns this plain flash loop; above
    256 (the models' 384, 640, 1024) its memory-efficient kernel keeps the head dim unpadded, while this kernel
    pads 384 to 512 (25% of its dot work wasted) and runs 32 x 16 tiles in one stage, an estimated 5-12% of the
    H100's bf16 peak (ROOFLINE.md), and cannot take 640 or 1024 at all. The Triton kernel still runs on request
    (``use_backend("triton")``) and under the interpreter."""
    if q.device.type == "cuda" or is_recording():
        return "PyTorch's SDPA is the faster kernel on paper for every head dim (spatial_attention.defer)"
    return None


def supports(q, k, v):
    """Why this kernel cannot take ``q, k, v``, or None."""
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"spatial_attention's kernel takes head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}"
    return None


def spatial_attention(q, k, v):
    N, L, D = q.shape
    if D > MAX_HEAD_DIM:
        raise NotImplementedError(f"spatial_attention (triton): head dim {D} > {MAX_HEAD_DIM}")
    out = q.new_empty(q.shape)
    if out.numel() == 0:
        return out
    dots = precision(q)
    block_m, block_n, block_d, warps, stages = config(D, q.dtype, dots)
    grid = (triton.cdiv(L, block_m), N)
    launch(_attention_kernel, grid, (q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                                     L, k.shape[1], D, LOG2E / math.sqrt(D)),
           dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=interpreted(q), PRECISION=dots),
           num_warps=warps, num_stages=stages, name=f"spatial_attention D={D} {q.dtype} {dots}",
           tensor_cores=q.dtype != torch.float32 or dots == "tf32")
    return out


def _aot_case(dtype, block_d, dots="ieee"):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    block_m, block_n, block_d, warps, stages = config(block_d, torch_dtype, dots)
    strides = ["sqn", "sql", "skn", "skl", "svn", "svl", "son", "sol"]
    signature = {**{p: f"*{dtype}" for p in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}, **{s: "i32" for s in strides},
                 **{s: "constexpr" for s in ("sqd", "skd", "svd", "sod")}, "L": "i32", "LK": "i32", "D": "i32",
                 "qk_scale": "fp32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr",
                 "UPCAST": "constexpr", "PRECISION": "constexpr"}
    name = f"spatial_attention D<={block_d} {dtype}" + (" tf32" if dtype == "fp32" and dots == "tf32" else "")
    return {"name": name, "fn": _attention_kernel, "signature": signature,
            # unit head-dim strides, as the JIT specialises them for the model's column slices
            "constexprs": {"sqd": 1, "skd": 1, "svd": 1, "sod": 1, "BLOCK_M": block_m, "BLOCK_N": block_n,
                           "BLOCK_D": block_d, "UPCAST": False, "PRECISION": dots},
            "num_warps": warps, "num_stages": stages, "tensor_cores": dtype != "fp32" or dots == "tf32"}


AOT_CASES = [_aot_case(dtype, block_d, dots) for dtype, dots in (("bf16", "ieee"), ("fp32", "ieee"), ("fp32", "tf32"))
             for block_d in sorted(_CONFIGS["fp32"])]
