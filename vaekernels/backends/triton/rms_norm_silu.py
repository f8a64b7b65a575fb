"""Fused RMS norm (+ SiLU) over the channel dim: one read and one write of the activation.

A program takes a block of positions ("rows": every index except the channel one) and all
channels of each, so the per-position statistic is a register reduction. In the model the
activation is channels-last, so a row's channels are contiguous and loads are coalesced.
Rows are addressed through up to four (size, stride) pairs, which covers any strided 5-D
tensor, e.g. ``out`` being a view ``buf[:, :, 2:]`` of a conv's input buffer. Channel counts
above ``MAX_BLOCK_C`` are walked in chunks (a second read of the row, from cache).
Statistics are always float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...shapes import empty_output
from ._launch import interpreted, launch

MAX_BLOCK_C = 1024  # widest channel tile held in registers in one piece
_ROW_DIMS = 4


@triton.jit
def _row_offsets(rows, S1, S2, S3, s0, s1, s2, s3):
    """Memory offset of each row index, rows being row-major over sizes (S0, S1, S2, S3).

    The index arithmetic stays int32 (rows < 2**31); only the products with strides are int64,
    since int64 division costs registers and instructions on a GPU.
    """
    i3 = rows % S3
    r = rows // S3
    i2 = r % S2
    r = r // S2
    return ((r // S1).to(tl.int64) * s0 + (r % S1).to(tl.int64) * s1 + i2.to(tl.int64) * s2
            + i3.to(tl.int64) * s3)


@triton.jit
def _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C: tl.constexpr):
    cols = c0 + tl.arange(0, BLOCK_C)
    mask = row_ok[:, None] & (cols < C)[None, :]
    # the cast comes before any arithmetic: the interpreter computes bf16 on raw bits
    return tl.load(x_ptr + x_rows[:, None] + cols[None, :] * xsc, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _normalize_store(x, inv, g_ptr, gs, y_ptr, y_rows, row_ok, c0, C, ysc, SILU: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    cols = c0 + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    g = tl.load(g_ptr + cols * gs, mask=col_ok, other=0.0).to(tl.float32)
    y = x * inv[:, None] * g[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(y_ptr + y_rows[:, None] + cols[None, :] * ysc, y.to(y_ptr.dtype.element_ty), mask=mask)


# sizes that vary with the clip and chunk: not specialised on
@triton.jit(do_not_specialize=["R", "S1", "S2", "S3"])
def _rms_norm_silu_kernel(x_ptr, g_ptr, y_ptr, R, C, S1, S2, S3,
                          xs0, xs1, xs2, xs3, xsc, ys0, ys1, ys2, ys3, ysc, gs, eps, scale,
                          SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y = x / max(||x||_2 over channels, eps) * scale * gamma, then SiLU if SILU.

    x_ptr, y_ptr: [S0, S1, S2, S3] rows x C channels, any strides (xs*/ys* per row dim, xsc/ysc
    per channel); g_ptr: gamma [C] (stride gs); R = S0*S1*S2*S3; scale = sqrt(C).
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    x_rows = _row_offsets(rows, S1, S2, S3, xs0, xs1, xs2, xs3)
    y_rows = _row_offsets(rows, S1, S2, S3, ys0, ys1, ys2, ys3)
    if BLOCK_C >= C:
        x = _load_chunk(x_ptr, x_rows, row_ok, 0, C, xsc, BLOCK_C)
        inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        _normalize_store(x, inv, g_ptr, gs, y_ptr, y_rows, row_ok, 0, C, ysc, SILU, BLOCK_C)
    else:
        ss = tl.zeros([BLOCK_R], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
            ss += tl.sum(x * x, axis=1)
        inv = scale / tl.maximum(tl.sqrt(ss), eps)
        for c0 in range(0, C, BLOCK_C):
            x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
            _normalize_store(x, inv, g_ptr, gs, y_ptr, y_rows, row_ok, c0, C, ysc, SILU, BLOCK_C)


def block_sizes(C, interpret=False):
    """(BLOCK_R, BLOCK_C, num_warps): 2K elements a program on a GPU (each row's offsets cost
    registers in every thread that holds part of it: 4K elements reached 252 registers at C=96);
    64K in the interpreter, whose cost is per program."""
    block_c = min(triton.next_power_of_2(C), MAX_BLOCK_C)
    elements = 65536 if interpret else 2048
    return max(1, elements // block_c), block_c, 4 if block_c <= 512 else 8


def _row_dims(x, y):
    """Every dim but the channel one as (size, x stride, y stride), merged where both tensors allow
    and padded in front to four dims."""
    dims = [(s, xs, ys) for i, (s, xs, ys) in enumerate(zip(x.shape, x.stride(), y.stride())) if i != 1 and s != 1]
    merged = []
    for size, xs, ys in dims:
        if merged and merged[-1][1] == xs * size and merged[-1][2] == ys * size:
            merged[-1] = (merged[-1][0] * size, xs, ys)
        else:
            merged.append((size, xs, ys))
    if len(merged) > _ROW_DIMS:
        raise NotImplementedError(f"rms_norm_silu (triton): at most {_ROW_DIMS} non-channel dims that cannot be "
                                  f"merged, got shape {tuple(x.shape)} with strides {x.stride()}")
    return [(1, 0, 0)] * (_ROW_DIMS - len(merged)) + merged


def rms_norm_silu(x, gamma, silu, eps, out):
    if out is None:
        out = empty_output(x, x.shape)
    C = x.shape[1]
    dims = _row_dims(x, out)
    sizes = [d[0] for d in dims]
    rows = math.prod(sizes)
    if rows == 0 or C == 0:
        return out
    block_r, block_c, warps = block_sizes(C, interpreted(x))
    grid = (triton.cdiv(rows, block_r),)
    launch(_rms_norm_silu_kernel, grid,
           (x, gamma, out, rows, C, *sizes[1:], *(d[1] for d in dims), x.stride(1), *(d[2] for d in dims),
            out.stride(1), gamma.stride(0), eps, math.sqrt(C)),
           dict(SILU=bool(silu), BLOCK_R=block_r, BLOCK_C=block_c), num_warps=warps, num_stages=1,
           name=f"rms_norm_silu C={C} {x.dtype}", tensor_cores=False)
    return out


def _aot_case(dtype, C, silu):
    block_r, block_c, warps = block_sizes(C)
    ints = ["R", "C", "S1", "S2", "S3", "xs0", "xs1", "xs2", "xs3", "ys0", "ys1", "ys2", "ys3", "gs"]
    signature = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", **{n: "i32" for n in ints},
                 "xsc": "constexpr", "ysc": "constexpr", "eps": "fp32", "scale": "fp32",
                 "SILU": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
    # channel strides of 1 are what the JIT specialises on for channels-last activations
    return {"name": f"rms_norm_silu C={C} {dtype}", "fn": _rms_norm_silu_kernel, "signature": signature,
            "constexprs": {"xsc": 1, "ysc": 1, "SILU": silu, "BLOCK_R": block_r, "BLOCK_C": block_c},
            "num_warps": warps, "num_stages": 1, "tensor_cores": False}


# the model's channel counts (one tile each) and one above MAX_BLOCK_C (the chunked path)
AOT_CASES = [_aot_case("bf16", C, True) for C in (96, 192, 384)] + [
    _aot_case("fp32", 384, False), _aot_case("bf16", 2 * MAX_BLOCK_C, True)]
