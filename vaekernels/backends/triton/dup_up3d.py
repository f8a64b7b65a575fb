"""Wan2.2's upsampling shortcut (``dup_up3d``) as one gather pass (Triton).

Design: a program takes a block of output positions (rows: n, frame, h, w) and a block of output channels, and
reads each element from its input pixel and channel: output frame t' is input frame (t' + drop) // ft, pixel
(h // fs, w // fs), and channel (o*FACTOR + q) // REPEATS with q the position's offset in its ft x fs x fs block.
The repeated tensor of the module's definition is never written; each output element is written once.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ...shapes import dup_up3d_output_shape, empty_output
from ._launch import interpreted, launch


# sizes that vary with the clip and chunk: not specialised on
@triton.jit(do_not_specialize=["P", "T_OUT", "H_OUT", "W_OUT", "DROP"])
def _dup_up3d_kernel(x_ptr, out_ptr, P, O, T_OUT, H_OUT, W_OUT, DROP,
                     sx_n, sx_c, sx_t, sx_h, sx_w, so_n, so_c, so_t, so_h, so_w,
                     FT: tl.constexpr, FS: tl.constexpr, REPEATS: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr):
    """out[n, o, t', hh, ww] = x[n, (o*FACTOR + q) // REPEATS, s // FT, hh // FS, ww // FS], s = t' + DROP,
    q = ((s % FT)*FS + hh % FS)*FS + ww % FS, FACTOR = FT*FS*FS.

    x: [N, C, T, H, W], out: [N, O, T_OUT, H_OUT, W_OUT], by strides; P = N*T_OUT*H_OUT*W_OUT.
    """
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    p_ok = rp < P
    o_ok = ro < O
    ww = rp % W_OUT
    r = rp // W_OUT
    hh = r % H_OUT
    r = r // H_OUT
    to = r % T_OUT
    n = (r // T_OUT).to(tl.int64)
    s = to + DROP
    q = ((s % FT) * FS + hh % FS) * FS + ww % FS
    c = ((ro[None, :] * (FT * FS * FS) + q[:, None]) // REPEATS).to(tl.int64)
    x_ptrs = x_ptr + (n * sx_n + (s // FT).to(tl.int64) * sx_t + (hh // FS).to(tl.int64) * sx_h
                      + (ww // FS).to(tl.int64) * sx_w)[:, None] + c * sx_c
    mask = p_ok[:, None] & o_ok[None, :]
    v = tl.load(x_ptrs, mask=mask, other=0.0)
    o_ptrs = out_ptr + (n * so_n + to.to(tl.int64) * so_t + hh.to(tl.int64) * so_h
                        + ww.to(tl.int64) * so_w)[:, None] + ro.to(tl.int64)[None, :] * so_c
    tl.store(o_ptrs, v, mask=mask)


BLOCK_P, BLOCK_O, NUM_WARPS = 32, 64, 8  # 2K outputs a program: no spills on sm_80/sm_90 (ptxas; 4 warps spill
# under Triton 3.6)
_INTERPRETER_BLOCKS = (1024, 64)  # the interpreter's cost is per program


def dup_up3d(x, factor_t, factor_s, out_channels, drop):
    out = empty_output(x, dup_up3d_output_shape(x.shape, factor_t, factor_s, out_channels, drop))
    n, o, t_out, h_out, w_out = out.shape
    p = n * t_out * h_out * w_out
    if out.numel() == 0:
        return out
    if p >= 2 ** 31:
        raise ValueError(f"dup_up3d (triton): {p} output positions; at most 2^31 - 1 per call")
    repeats = out_channels * factor_t * factor_s * factor_s // x.shape[1]
    block_p, block_o = _INTERPRETER_BLOCKS if interpreted(x) else (BLOCK_P, BLOCK_O)
    grid = (triton.cdiv(p, block_p), triton.cdiv(o, block_o))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        launch(_dup_up3d_kernel, grid, (x, out, p, o, t_out, h_out, w_out, drop, *x.stride(), *out.stride()),
               dict(FT=factor_t, FS=factor_s, REPEATS=repeats, BLOCK_P=block_p, BLOCK_O=block_o),
               num_warps=NUM_WARPS, num_stages=1, name=f"dup_up3d ft={factor_t} repeats={repeats} {x.dtype}",
               tensor_cores=False)
    return out


def _aot_case(dtype, factor_t, repeats):
    names = _dup_up3d_kernel.arg_names
    constexprs = {"sx_c": 1, "so_c": 1, "FT": factor_t, "FS": 2, "REPEATS": repeats, "BLOCK_P": BLOCK_P,
                  "BLOCK_O": BLOCK_O}
    signature = {a: "constexpr" if a in constexprs else f"*{dtype}" if a.endswith("_ptr") else "i32" for a in names}
    return {"name": f"dup_up3d ft={factor_t} repeats={repeats} {dtype}", "fn": _dup_up3d_kernel,
            "signature": signature, "constexprs": constexprs, "num_warps": NUM_WARPS, "num_stages": 1,
            "tensor_cores": False}


# Wan2.2's shortcuts: 2x2x2 blocks repeating each channel 8 times (stages 0, 1), 2x2 repeating twice (stage 2)
AOT_CASES = [_aot_case("bf16", 2, 8), _aot_case("bf16", 1, 2), _aot_case("fp32", 2, 8)]
