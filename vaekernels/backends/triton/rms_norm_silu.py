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
# the backward's programs: enough to fill an H100's 132 SMs several times over; more would only lengthen the
# sum of their partial gamma gradients
BACKWARD_PROGRAMS = 2048
MAX_ITERS = 64
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
def _sum_of_squares(x_ptr, x_rows, row_ok, C, xsc, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each row's sum of squares over its C channels, read in chunks of BLOCK_C."""
    ss = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
        ss += tl.sum(x * x, axis=1)
    return ss


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
        ss = _sum_of_squares(x_ptr, x_rows, row_ok, C, xsc, BLOCK_R, BLOCK_C)
        inv = scale / tl.maximum(tl.sqrt(ss), eps)
        for c0 in range(0, C, BLOCK_C):
            x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
            _normalize_store(x, inv, g_ptr, gs, y_ptr, y_rows, row_ok, c0, C, ysc, SILU, BLOCK_C)


@triton.jit
def _backward_chunk(x, dy_ptr, g_ptr, dy_rows, row_ok, c0, C, dysc, gs, inv, SILU: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    """For a chunk x (loaded, float32) of the rows: dy * gamma (dy taken back through the SiLU first) and dy * xhat
    (gamma's gradient), xhat = x * inv, float32."""
    cols = c0 + tl.arange(0, BLOCK_C)
    dy = _load_chunk(dy_ptr, dy_rows, row_ok, c0, C, dysc, BLOCK_C)
    g = tl.load(g_ptr + cols * gs, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    xhat = x * inv[:, None]
    if SILU:
        u = xhat * g
        sig = tl.sigmoid(u)
        dy = dy * sig * (1.0 + u * (1.0 - sig))
    return dy * g, dy * xhat


@triton.jit
def _store_dx(dx_ptr, dx_rows, row_ok, c0, C, dxsc, x, gy, proj, inv, BLOCK_C: tl.constexpr):
    cols = c0 + tl.arange(0, BLOCK_C)
    dx = (gy - x * proj[:, None]) * inv[:, None]
    tl.store(dx_ptr + dx_rows[:, None] + cols[None, :] * dxsc, dx.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols < C)[None, :])


@triton.jit
def _add_dg(dg_row, c0, C, dg, BLOCK_C: tl.constexpr):
    cols = c0 + tl.arange(0, BLOCK_C)
    ok = cols < C
    tl.store(dg_row + cols, tl.load(dg_row + cols, mask=ok, other=0.0) + tl.sum(dg, axis=0), mask=ok)


@triton.jit(do_not_specialize=["R", "S1", "S2", "S3"])
def _rms_norm_silu_backward_kernel(dy_ptr, x_ptr, g_ptr, dx_ptr, dg_ptr, R, C, S1, S2, S3,
                                   ys0, ys1, ys2, ys3, ysc, xs0, xs1, xs2, xs3, xsc, ds0, ds1, ds2, ds3, dsc, gs,
                                   eps, scale, SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                   ITERS: tl.constexpr):
    """The backward of _rms_norm_silu_kernel: dx (dx_ptr, strides ds*) from dy (ys*) and x (xs*) on ITERS blocks of
    BLOCK_R rows, and their sum of gamma's gradient, added into row program_id of dg_ptr ([programs, C] float32,
    zeroed). With n = max(|x|, eps), xhat = x * scale / n, u = xhat * gamma: dgamma = sum dy * xhat; dx = (dy * gamma
    - x * <dy * gamma, x> / |x|^2) * scale / n, the projection only where |x| > eps (autograd through the clamp)."""
    pid = tl.program_id(0)
    dg_row = dg_ptr + pid.to(tl.int64) * C
    for it in range(ITERS):
        rows = (pid * ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        x_rows = _row_offsets(rows, S1, S2, S3, xs0, xs1, xs2, xs3)
        dy_rows = _row_offsets(rows, S1, S2, S3, ys0, ys1, ys2, ys3)
        dx_rows = _row_offsets(rows, S1, S2, S3, ds0, ds1, ds2, ds3)
        if BLOCK_C >= C:
            x = _load_chunk(x_ptr, x_rows, row_ok, 0, C, xsc, BLOCK_C)
            ss = tl.sum(x * x, axis=1)
            inv = scale / tl.maximum(tl.sqrt(ss), eps)
            gy, dg = _backward_chunk(x, dy_ptr, g_ptr, dy_rows, row_ok, 0, C, ysc, gs, inv, SILU, BLOCK_C)
            _add_dg(dg_row, 0, C, dg, BLOCK_C)
            proj = tl.where(tl.sqrt(ss) > eps, tl.sum(gy * x, axis=1) / tl.maximum(ss, eps * eps), 0.0)
            _store_dx(dx_ptr, dx_rows, row_ok, 0, C, dsc, x, gy, proj, inv, BLOCK_C)
        else:
            ss = _sum_of_squares(x_ptr, x_rows, row_ok, C, xsc, BLOCK_R, BLOCK_C)
            inv = scale / tl.maximum(tl.sqrt(ss), eps)
            dot = tl.zeros([BLOCK_R], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
                gy, dg = _backward_chunk(x, dy_ptr, g_ptr, dy_rows, row_ok, c0, C, ysc, gs, inv, SILU, BLOCK_C)
                _add_dg(dg_row, c0, C, dg, BLOCK_C)
                dot += tl.sum(gy * x, axis=1)
            proj = tl.where(tl.sqrt(ss) > eps, dot / tl.maximum(ss, eps * eps), 0.0)
            for c0 in range(0, C, BLOCK_C):  # gy again from x and dy: a third read, from cache
                x = _load_chunk(x_ptr, x_rows, row_ok, c0, C, xsc, BLOCK_C)
                gy, dg = _backward_chunk(x, dy_ptr, g_ptr, dy_rows, row_ok, c0, C, ysc, gs, inv, SILU, BLOCK_C)
                _store_dx(dx_ptr, dx_rows, row_ok, c0, C, dsc, x, gy, proj, inv, BLOCK_C)


def block_sizes(C, interpret=False, backward=False):
    """(BLOCK_R, BLOCK_C, num_warps): 2K elements a program on a GPU (each row's offsets cost
    registers in every thread that holds part of it: 4K elements reached 252 registers at C=96), 1K for the
    backward (three tensors' offsets and more live values: 2K reached 255 registers at C=96); 64K in the
    interpreter, whose cost is per program."""
    block_c = min(triton.next_power_of_2(C), MAX_BLOCK_C)
    elements = 65536 if interpret else 1024 if backward else 2048
    return max(1, elements // block_c), block_c, 4 if block_c <= 512 else 8


def _row_dims(*tensors):
    """Every dim but the channel one as (size, each tensor's stride...), merged where all the tensors allow
    and padded in front to four dims."""
    x = tensors[0]
    dims = [(s, *(t.stride(i) for t in tensors)) for i, s in enumerate(x.shape) if i != 1 and s != 1]
    merged = []
    for size, *strides in dims:
        if merged and all(prev == st * size for prev, st in zip(merged[-1][1:], strides)):
            merged[-1] = (merged[-1][0] * size, *strides)
        else:
            merged.append((size, *strides))
    if len(merged) > _ROW_DIMS:
        raise NotImplementedError(f"rms_norm_silu (triton): at most {_ROW_DIMS} non-channel dims that cannot be "
                                  f"merged, got shape {tuple(x.shape)} with strides {[t.stride() for t in tensors]}")
    return [(1,) + (0,) * len(tensors)] * (_ROW_DIMS - len(merged)) + merged


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


def rms_norm_silu_backward(grad, x, gamma, silu, eps):
    dx = empty_output(x, x.shape)
    C = x.shape[1]
    dims = _row_dims(grad, x, dx)
    sizes = [d[0] for d in dims]
    rows = math.prod(sizes)
    block_r, block_c, warps = block_sizes(C, interpreted(x), backward=True)
    blocks = triton.cdiv(rows, block_r)
    # each program walks `iters` row blocks (a power of two, few compiled variants), so that there are about
    # BACKWARD_PROGRAMS partial sums of gamma's gradient, added here in program order (the same sum on every run)
    iters = min(MAX_ITERS, triton.next_power_of_2(triton.cdiv(blocks, BACKWARD_PROGRAMS)))
    programs = triton.cdiv(blocks, iters)
    partial = torch.zeros(max(programs, 1), C, dtype=torch.float32, device=x.device)
    if rows and C:
        launch(_rms_norm_silu_backward_kernel, (programs,),
               (grad, x, gamma, dx, partial, rows, C, *sizes[1:], *(d[1] for d in dims), grad.stride(1),
                *(d[2] for d in dims), x.stride(1), *(d[3] for d in dims), dx.stride(1), gamma.stride(0), eps,
                math.sqrt(C)),
               dict(SILU=bool(silu), BLOCK_R=block_r, BLOCK_C=block_c, ITERS=iters), num_warps=warps,
               num_stages=1, name=f"rms_norm_silu_backward C={C} {x.dtype}", tensor_cores=False)
    return dx, partial.sum(0).to(gamma.dtype).reshape(gamma.shape)


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


def _aot_backward_case(dtype, C, silu, iters):
    block_r, block_c, warps = block_sizes(C, backward=True)
    ints = ["R", "C", "S1", "S2", "S3", "ys0", "ys1", "ys2", "ys3", "xs0", "xs1", "xs2", "xs3", "ds0", "ds1", "ds2",
            "ds3", "gs"]
    signature = {"dy_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}",
                 "dg_ptr": "*fp32", **{n: "i32" for n in ints}, "ysc": "constexpr", "xsc": "constexpr",
                 "dsc": "constexpr", "eps": "fp32", "scale": "fp32", "SILU": "constexpr", "BLOCK_R": "constexpr",
                 "BLOCK_C": "constexpr", "ITERS": "constexpr"}
    return {"name": f"rms_norm_silu_backward C={C} {dtype} iters={iters}", "fn": _rms_norm_silu_backward_kernel,
            "signature": signature,
            "constexprs": {"ysc": 1, "xsc": 1, "dsc": 1, "SILU": silu, "BLOCK_R": block_r, "BLOCK_C": block_c,
                           "ITERS": iters},
            "num_warps": warps, "num_stages": 1, "tensor_cores": False}


# the model's channel counts (one tile each) and one above MAX_BLOCK_C (the chunked path); the backward's also with
# several row blocks per program (the model's clips)
AOT_CASES = [_aot_case("bf16", C, True) for C in (96, 192, 384)] + [
    _aot_case("fp32", 384, False), _aot_case("bf16", 2 * MAX_BLOCK_C, True)] + [
    _aot_backward_case("bf16", C, True, 8) for C in (96, 384, 1024)] + [
    _aot_backward_case("fp32", 96, True, 1), _aot_backward_case("bf16", 2 * MAX_BLOCK_C, True, 2)]
