"""Wan2.2's downsampling shortcut (``avg_down3d``) as one gather-and-average pass (Triton).

Design: a program takes a block of output positions (rows: n, frame, h, w) and a block of output channels;
for each of the ``GROUP`` members of an output channel's group it finds the input channel and block offset it
averages (k = o*GROUP + g: channel k // FACTOR, offset k % FACTOR into the ft x fs x fs block), looks the
frame up in the sequence "zero frames, cache, x" and reads it from whichever tensor holds it, by its strides
(zero frames are masks). Sums in float32, one rounding. No frames are joined and no block tensor is written.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ...shapes import avg_down3d_output_shape, empty_output
from ._launch import interpreted, launch


# sizes that vary with the clip and chunk: not specialised on
@triton.jit(do_not_specialize=["P", "M", "HS", "WS", "ZEROS", "CACHE_T"])
def _avg_down3d_kernel(x_ptr, cache_ptr, out_ptr, P, O, M, HS, WS, ZEROS, CACHE_T,
                       sx_n, sx_c, sx_t, sx_h, sx_w, sc_n, sc_c, sc_t, sc_h, sc_w,
                       so_n, so_c, so_t, so_h, so_w,
                       FT: tl.constexpr, FS: tl.constexpr, GROUP: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr):
    """out[n, o, j, h, w] = mean over g < GROUP of seq[n, k // FACTOR, j*FT + a, h*FS + b, w*FS + e],
    k = o*GROUP + g, (a, b, e) the offsets of k % FACTOR; seq = ZEROS zero frames, cache, x.

    x: [N, C, T, FS*HS, FS*WS], cache: [N, C, CACHE_T, ...] (x itself when CACHE_T == 0), out: [N, O, M, HS, WS],
    all by strides (channels-last in the model). P = N*M*HS*WS output positions.
    """
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    p_ok = rp < P
    o_ok = ro < O
    w = rp % WS
    q = rp // WS
    h = q % HS
    q = q // HS
    j = q % M
    n = (q // M).to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for g in tl.static_range(GROUP):
        k = ro * GROUP + g
        c = (k // (FT * FS * FS)).to(tl.int64)
        off = k % (FT * FS * FS)
        a = off // (FS * FS)
        b = (off // FS) % FS
        e = off % FS
        s = j[:, None] * FT + a[None, :]  # frame in the sequence
        hh = (h[:, None] * FS + b[None, :]).to(tl.int64)
        ww = (w[:, None] * FS + e[None, :]).to(tl.int64)
        ok = p_ok[:, None] & o_ok[None, :]
        in_x = s >= ZEROS + CACHE_T
        in_c = (s >= ZEROS) & (s < ZEROS + CACHE_T)
        xs = x_ptr + n[:, None] * sx_n + c[None, :] * sx_c + (s - ZEROS - CACHE_T).to(tl.int64) * sx_t \
            + hh * sx_h + ww * sx_w
        cs = cache_ptr + n[:, None] * sc_n + c[None, :] * sc_c + (s - ZEROS).to(tl.int64) * sc_t \
            + hh * sc_h + ww * sc_w
        acc += tl.load(xs, mask=ok & in_x, other=0.0).to(tl.float32)
        acc += tl.load(cs, mask=ok & in_c, other=0.0).to(tl.float32)
    o_ptrs = out_ptr + (n * so_n + j.to(tl.int64) * so_t + h.to(tl.int64) * so_h + w.to(tl.int64) * so_w)[:, None] \
        + ro.to(tl.int64)[None, :] * so_c
    tl.store(o_ptrs, (acc / GROUP).to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


BLOCK_P, BLOCK_O, NUM_WARPS = 16, 64, 4  # 1K outputs a program: 64-bit gather addresses cost registers (ptxas: 32x64 spilled)
_INTERPRETER_BLOCKS = (1024, 64)  # the interpreter's cost is per program


def avg_down3d(x, cache, zeros, factor_t, factor_s, out_channels):
    c = 0 if cache is None else cache.shape[2]
    out = empty_output(x, avg_down3d_output_shape(x.shape, c, zeros, factor_t, factor_s, out_channels))
    n, o, m, hs, ws = out.shape
    p = n * m * hs * ws
    if out.numel() == 0:
        return out
    if p >= 2 ** 31:
        raise ValueError(f"avg_down3d (triton): {p} output positions; at most 2^31 - 1 per call")
    cache = x if c == 0 else cache
    group = x.shape[1] * factor_t * factor_s * factor_s // out_channels
    block_p, block_o = _INTERPRETER_BLOCKS if interpreted(x) else (BLOCK_P, BLOCK_O)
    grid = (triton.cdiv(p, block_p), triton.cdiv(o, block_o))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        launch(_avg_down3d_kernel, grid, (x, cache, out, p, o, m, hs, ws, zeros, c, *x.stride(), *cache.stride(),
                                          *out.stride()),
               dict(FT=factor_t, FS=factor_s, GROUP=group, BLOCK_P=block_p, BLOCK_O=block_o),
               num_warps=NUM_WARPS, num_stages=1, name=f"avg_down3d ft={factor_t} group={group} {x.dtype}",
               tensor_cores=False)
    return out


def _aot_case(dtype, factor_t, group):
    names = _avg_down3d_kernel.arg_names
    constexprs = {"sx_c": 1, "sc_c": 1, "so_c": 1, "FT": factor_t, "FS": 2, "GROUP": group, "BLOCK_P": BLOCK_P,
                  "BLOCK_O": BLOCK_O}
    signature = {a: "constexpr" if a in constexprs else f"*{dtype}" if a.endswith("_ptr") else "i32" for a in names}
    return {"name": f"avg_down3d ft={factor_t} group={group} {dtype}", "fn": _avg_down3d_kernel,
            "signature": signature, "constexprs": constexprs, "num_warps": NUM_WARPS, "num_stages": 1,
            "tensor_cores": False}


# Wan2.2's shortcuts: 2x2 in space (stage 0), 2x2x2 with time (stages 1, 2); groups of 4 channels
AOT_CASES = [_aot_case("bf16", ft, 4) for ft in (1, 2)] + [_aot_case("fp32", 2, 4)]
