"""Causal 3-D convolution as an implicit GEMM (Triton).

Design: one program computes a BLOCK_M x BLOCK_N tile of the output seen as a matrix, rows =
output positions (n, t, h, w), columns = output channels; K = kernel taps x input channels, walked
as one flat loop of (tap, channel block) steps so that the GPU pipeliner sees one long loop. Nothing
is materialised: for each tap a row's input frame is looked up in the virtual sequence "zero frames,
then ``cache``, then ``x``" and read from whichever of the two tensors holds it, by its own strides
(zero frames and spatial padding are masks). Activations are channels-last in the model, so the
channel axis of the A tile is contiguous. fp32 accumulation; bias and residual are added in the
epilogue before the single rounding to the output dtype.

Offsets into activations are int64: a 720p clip's activations exceed 2^31 elements. Output
positions themselves stay int32 (checked on the host).

The same kernel runs ``upsample_conv2d`` with ``UP=2``: spatial taps index a virtual 2x nearest-
upsampled grid and read the low-resolution input at (row // 2, col // 2).
"""
from __future__ import annotations

import contextlib
import re

import torch
import triton
import triton.language as tl

from ... import envs
from ...shapes import conv_output_shape, empty_output

# The interpreter stores bf16 as raw uint16 and computes on the bit patterns, so when interpreting
# the operands are widened to fp32 before the dot; compiled kernels keep bf16 for the tensor cores.
# Read at import like Triton itself reads it (at decoration).
_INTERPRET = tl.constexpr(envs.TRITON_INTERPRET)


@triton.jit
def _offset(i0, s0, i1, s1, i2, s2):
    """``i0*s0 + i1*s1 + i2*s2`` in int64; each index is widened before its multiply, so no partial
    product wraps at 2^31 whatever the integer width of the strides."""
    return i0.to(tl.int64) * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2


@triton.jit
def _causal_conv3d_kernel(
    x_ptr, cache_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    M, CIN, COUT, T_OUT, H_OUT, W_OUT, H_IN, W_IN, ZEROS, CACHE_T,
    sx_n, sx_c, sx_t, sx_h, sx_w,
    sc_n, sc_c, sc_t, sc_h, sc_w,
    sw_o, sw_i, sw_t, sw_h, sw_w,
    sr_n, sr_c, sr_t, sr_h, sr_w,
    so_n, so_c, so_t, so_h, so_w,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    UP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out = conv(zeros ++ cache ++ x) + bias + residual, all ``[N, C, T, H, W]`` by strides.

    x: [N, CIN, T, H_IN, W_IN], channels-last in the model (sx_c == 1).
    cache: [N, CIN, CACHE_T, H_IN, W_IN], the frames in front of x (any strides; x when CACHE_T == 0).
    w: [COUT, CIN, KT, KH, KW] by strides (channels-last, sw_i == 1, gives contiguous K).
    bias: [COUT] (read only when HAS_BIAS). res, out: [N, COUT, T_OUT, H_OUT, W_OUT] by strides.
    ZEROS zero frames precede the cache; H_IN x W_IN is seen UP-times upsampled (nearest).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < COUT

    ow = rm % W_OUT
    q = rm // W_OUT
    oh = q % H_OUT
    q = q // H_OUT
    ot = q % T_OUT
    nb = q // T_OUT
    # tap (0, 0, 0) of each row: frame in the sequence cache ++ x (negative: zero frames), and the
    # position on the (upsampled) padded grid
    t0 = ot * ST - ZEROS
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    x_row = nb.to(tl.int64) * sx_n
    c_row = nb.to(tl.int64) * sc_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_blocks = tl.cdiv(CIN, BLOCK_K)
    for step in range(KT * KH * KW * k_blocks):
        tap = step // k_blocks
        ci = (step % k_blocks) * BLOCK_K + rk
        kw = tap % KW
        kh = (tap // KW) % KH
        kt = tap // (KW * KH)
        ts = t0 + kt
        hu = h0 + kh
        wu = w0 + kw
        row_ok = m_ok & (ts >= 0) & (hu >= 0) & (hu < H_IN * UP) & (wu >= 0) & (wu < W_IN * UP)
        hi = hu // UP
        wi = wu // UP
        in_x = ts >= CACHE_T
        x_rows = x_ptr + x_row + _offset(ts - CACHE_T, sx_t, hi, sx_h, wi, sx_w)
        c_rows = cache_ptr + c_row + _offset(ts, sc_t, hi, sc_h, wi, sc_w)
        ci64 = ci.to(tl.int64)
        a_ptrs = tl.where(in_x[:, None], x_rows[:, None] + ci64[None, :] * sx_c,
                          c_rows[:, None] + ci64[None, :] * sc_c)
        c_ok = ci < CIN
        a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        w_ptrs = (w_ptr + kt * sw_t + kh * sw_h + kw * sw_w
                  + ci[:, None] * sw_i + rn[None, :] * sw_o)
        b = tl.load(w_ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if _INTERPRET:
            if a.dtype == tl.bfloat16:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    rn64 = rn.to(tl.int64)
    if HAS_RES:
        r_ptrs = res_ptr + (nb.to(tl.int64) * sr_n + _offset(ot, sr_t, oh, sr_h, ow, sr_w))[:, None] \
            + rn64[None, :] * sr_c
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    o_ptrs = out_ptr + (nb.to(tl.int64) * so_n + _offset(ot, so_t, oh, so_h, ow, so_w))[:, None] \
        + rn64[None, :] * so_c
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Block sizes: shape rules on the channel counts (never on frames or pixels).
# ---------------------------------------------------------------------------
BLOCK_M = 128
NUM_STAGES = 3


def _config(cin, cout, dtype, precision):
    """``(BLOCK_N, BLOCK_K, num_warps)`` for a GPU; BLOCK_M is always 128.

    Checked with ptxas for sm_80 and sm_90 on the model's channel counts (see AOT_CASES): no spills,
    shared memory within budget, tensor cores except for ieee fp32.
    """
    block_n = 16 if cout <= 16 else 64 if cout <= 64 else 128
    fma = dtype == torch.float32 and precision == "ieee"  # no tensor cores: a deeper K step only adds registers
    # fp32 (tf32) tiles take twice the shared memory per stage: half the depth keeps 3 stages
    block_k = 16 if cin <= 16 or fma else 32 if dtype == torch.float32 else 64
    # with 4 warps ptxas spills on 128x128 tiles, on 128x64x64 ones and on float32 128x64 ones (FMA; and TF32 under
    # Triton 3.6, the GPU machine's)
    warps = 8 if block_n == 128 or (block_n == 64 and (block_k == 64 or dtype == torch.float32)) else 4
    return block_n, block_k, warps


def _interpreter_blocks(m, cin, cout):
    """One large tile: the interpreter's cost is per program and per loop step, not per element."""
    return (min(triton.next_power_of_2(m), 4096), max(16, min(triton.next_power_of_2(cout), 256)),
            max(16, min(triton.next_power_of_2(cin), 128)))


def _precision(x):
    """float32 dots as PyTorch would run this conv on ``x``'s device: on CUDA, TF32 while cuDNN may use it for
    convs (``torch.backends.cudnn.allow_tf32``, on by default), else IEEE; on CPU (the interpreter) IEEE, as
    PyTorch's CPU convs. 16-bit dots ignore it."""
    if x.dtype != torch.float32:
        return "tf32"
    return "tf32" if x.device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "ieee"


def launch_conv(x, cache, zeros, weight, bias, residual, out, stride, padding, up=1):
    """Run the kernel: ``out = conv(zeros ++ cache ++ x) + bias + residual`` (see the kernel).

    ``weight`` is ``[Cout, Cin, kt, kh, kw]``; ``padding`` is ``(ph, pw)`` on the (upsampled) grid.
    """
    n, cin, _, h, w = x.shape
    cout, _, kt, kh, kw = weight.shape
    m = out.shape[0] * out.shape[2] * out.shape[3] * out.shape[4]
    if m == 0 or cout == 0:
        return out
    if m >= 2 ** 31:
        raise ValueError(f"causal_conv3d (triton): {m} output positions; at most 2^31 - 1 per call")
    if weight.stride(1) != 1:
        # K is walked channel-fastest: a channels-last weight (a small copy) makes its loads contiguous
        weight = weight.contiguous(memory_format=torch.channels_last_3d)
    c = 0 if cache is None else cache.shape[2]
    cache = x if c == 0 else cache
    precision = _precision(x)
    if _INTERPRET:
        block_m, block_n, block_k = _interpreter_blocks(m, cin, cout)
        launch = {}
    else:
        block_m = BLOCK_M
        block_n, block_k, warps = _config(cin, cout, x.dtype, precision)
        launch = {"num_warps": warps, "num_stages": NUM_STAGES}
    grid = (triton.cdiv(m, block_m), triton.cdiv(cout, block_n))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _causal_conv3d_kernel[grid](
            x, cache, weight, weight if bias is None else bias, out if residual is None else residual, out,
            m, cin, cout, out.shape[2], out.shape[3], out.shape[4], h, w, zeros, c,
            *x.stride(), *cache.stride(), *weight.stride(),
            *(out if residual is None else residual).stride(), *out.stride(),
            KT=kt, KH=kh, KW=kw, ST=stride[0], SH=stride[1], SW=stride[2], PH=padding[0], PW=padding[1],
            UP=up, HAS_BIAS=bias is not None, HAS_RES=residual is not None, PRECISION=precision,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, **launch)
    return out


def causal_conv3d(x, weight, bias, cache, stride, padding, residual, out):
    c = 0 if cache is None else cache.shape[2]
    if out is None:
        out = empty_output(x, conv_output_shape(x.shape, weight.shape, c, stride, padding))
    if out.shape[2] == 0:
        return out
    zeros = max(0, 2 * padding[0] - c)
    return launch_conv(x, cache, zeros, weight, bias, residual, out, stride, padding[1:])


# ---------------------------------------------------------------------------
# Ahead-of-time compile cases: every (block config, dtype, precision) the rules above can pick,
# for the model's 3x3x3 conv geometry; the checker compiles them for sm_80 and sm_90.
# ---------------------------------------------------------------------------
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# As the JIT specialises the model's arguments: channel strides are 1 (channels-last activations
# and weights) and become constants; pointers, channel counts and the other strides (multiples of
# the channel count, a multiple of 16 except at the RGB ends) are 16-divisible ("attrs"); frame and
# pixel counts are not assumed to be. The divisibility is what lets the channel-axis loads vectorise
# and the K loop pipeline through cp.async. Without any (pointers only), ptxas reports spills of
# 0.5-5 KB: a conv whose output strides are all odd would pay for them.
_UNIT_STRIDES = {"sx_c": 1, "sc_c": 1, "sw_i": 1, "sr_c": 1, "so_c": 1}
_DIVISIBLE = re.compile(r".*_ptr|CIN|COUT|s[xcwro]_[a-z]")


def aot_cases(name, geometry):
    """One case per (config, dtype, precision) that ``_config`` can return, for a conv ``geometry``
    (the KT..UP constexprs, and HAS_RES where it differs)."""
    names = _causal_conv3d_kernel.arg_names
    cases = []
    for dtype, short in _DTYPES.items():
        for precision in ("ieee", "tf32") if dtype == torch.float32 else ("tf32",):
            configs = sorted({_config(cin, cout, dtype, precision) for cin in (16, 128) for cout in (16, 64, 128)})
            for block_n, block_k, warps in configs:
                constexprs = {**_UNIT_STRIDES, "HAS_BIAS": True, "HAS_RES": True, **geometry,
                              "PRECISION": precision, "BLOCK_M": BLOCK_M, "BLOCK_N": block_n, "BLOCK_K": block_k}
                signature = {a: "constexpr" if a in constexprs else f"*{short}" if a.endswith("_ptr") else "i32"
                             for a in names}
                tag = short if dtype != torch.float32 else f"{short}_{precision}"
                cases.append({
                    "name": f"{name}_{tag}_n{block_n}_k{block_k}",
                    "fn": _causal_conv3d_kernel, "signature": signature, "constexprs": constexprs,
                    "attrs": {(names.index(a),): [["tt.divisibility", 16]]
                              for a, kind in signature.items() if kind != "constexpr" and _DIVISIBLE.fullmatch(a)},
                    "num_warps": warps, "num_stages": NUM_STAGES,
                    "tensor_cores": dtype != torch.float32 or precision == "tf32",
                })
    return cases


AOT_CASES = aot_cases("causal_conv3d_3x3x3", dict(KT=3, KH=3, KW=3, ST=1, SH=1, SW=1, PH=1, PW=1, UP=1))
