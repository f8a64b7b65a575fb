"""Causal 3-D convolution as an implicit GEMM (Triton).

Design: one program computes a BLOCK_M x (BLOCK_N + BLOCK_N2) tile of the output seen as a matrix, rows =
output positions (n, t, h, w), columns = output channels (two power-of-two dots on one A tile, so that 96, 160
or 192 channels fill their tiles); K = kernel taps x input channels, walked as one flat loop of (tap, channel
block) steps so that the GPU pipeliner sees one long loop. Nothing is materialised: for each tap a row's input
frame is looked up in the virtual sequence "zero frames, then ``cache``, then ``x``" (zero frames and spatial
padding are masks). What a row needs that does not depend on the tap is computed before the loop: its base
offset and a bitmask of the taps that fall inside the input, so a K step adds one scalar offset per tap and tests
one bit per row. When the cache lies right in front of x in one tensor (the engine's layout) or is absent, the
pair is read as one tensor; a cache held apart is chosen per element (slower: the compiler loses the pointers'
alignment). Activations are channels-last in the model, so the channel axis of the A tile is contiguous. Few
input channels (the RGB input) pack (tap, channel) into K. fp32 accumulation; bias and residual are added in the
epilogue before the single rounding to the output dtype.

Offsets into activations are int64: a 720p clip's activations exceed 2^31 elements; a tap's offset within x is
added in 32 bits (``supports`` refuses the rare frame for which it would not fit). Output positions stay int32
(checked on the host).

The same kernel runs ``upsample_conv2d`` with ``UP=2``: spatial taps index a virtual 2x nearest-
upsampled grid and read the low-resolution input at (row // 2, col // 2). The downsamplers' stride-2 4x4
weight whose first row and column are zero (layers.blocks.Resample) runs as its 3x3 part without padding in
front; the pad behind is the bounds mask.

Stride-1 convs with few output channels whose cache is joined (the decoder's RGB output conv, 96 -> 3: 3 of a
16-column tile, its input read once per tap) run a second kernel, ``_narrow_conv3d_kernel``: its columns are
(spatial tap, output channel) pairs
(27 of 32) over a window of input pixels, the taps' partial sums then added across the window's rows by
``tl.gather``. Its floor is memory's (2 x 96 x 27 x 3 FLOPs per 192 input bytes: 81 FLOP/B against the H100's ridge
of ~295); ROOFLINE.md has its estimate.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import triton
import triton.language as tl

from ... import envs
from ._launch import interpreted, launch
from ...shapes import conv_output_shape, empty_output
# the weight's gradient has no Triton kernel: ATen's (cuDNN's on CUDA), as the torch backend runs it
from ..torch import causal_conv3d_weight_grad  # noqa: F401
from ..torch import causal_conv3d_data_grad as torch_causal_conv3d_data_grad

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
def _mma(a, b_ptrs, k_ok, n_ok, acc, PRECISION: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    """``acc + a @ w`` for the weight tile at ``b_ptrs`` ([BLOCK_K, BLOCK_N] pointers)."""
    if EVEN_K and EVEN_N:
        b = tl.load(b_ptrs)
    elif EVEN_K:
        b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
    else:
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    if _INTERPRET:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _epilogue(acc, rn, COUT, m_ok, nb, ot, oh, ow, bias_ptr, res_ptr, out_ptr,
              sr_n, sr_c, sr_t, sr_h, sr_w, so_n, so_c, so_t, so_h, so_w,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr):
    """Bias and residual added to the float32 tile, then its one rounding to the output dtype."""
    n_ok = rn < COUT
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


# counts that vary from chunk to chunk and clip to clip: not specialised on (one compiled variant serves them all)
@triton.jit(do_not_specialize=["M", "T_OUT", "H_OUT", "W_OUT", "H_IN", "W_IN", "ZEROS", "CACHE_T"])
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
    PACKED: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, JOINED: tl.constexpr, W_FLAT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out = conv(zeros ++ cache ++ x) + bias + residual, all ``[N, C, T, H, W]`` by strides.

    x: [N, CIN, T, H_IN, W_IN], channels-last in the model (sx_c == 1).
    cache: [N, CIN, CACHE_T, H_IN, W_IN], the frames in front of x (any strides; x when CACHE_T == 0).
    w: [COUT, CIN, KT, KH, KW] by strides (sw_i == 1 gives contiguous K).
    bias: [COUT] (read only when HAS_BIAS). res, out: [N, COUT, T_OUT, H_OUT, W_OUT] by strides.
    ZEROS zero frames precede the cache; H_IN x W_IN is seen UP-times upsampled (nearest); padding is
    PH, PW before the first row and column, and whatever the output size asks for after the last (masked).
    A program's columns are BLOCK_N + BLOCK_N2 output channels (BLOCK_N2 may be 0): two power-of-two dots
    on one A tile, so that 96, 160 or 192 channels fill their tiles.
    PACKED: K is the flat (tap, channel) index, so a conv with few input channels (the RGB one) fills
    its K tiles; else K steps are (tap, channel block), EVEN_K when BLOCK_K divides CIN, JOINED when the cache is
    the frames right in front of x in one tensor (x's strides; the engine's layout) or absent, W_FLAT when
    w is channels-last contiguous (K offset = tap * CIN + channel).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * (BLOCK_N + BLOCK_N2) + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < COUT
    w_cols = w_ptr + rn.to(tl.int64) * sw_o

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
    # What a row needs that does not depend on the tap is computed once, here: the K loop adds one
    # scalar offset per tap to a per-row base and chooses x or cache per row (rebuilding the rows'
    # 64-bit offsets and choosing per element at every K step cost ~375 SASS instructions per step).
    if UP == 1:
        x_base = x_ptr + (nb.to(tl.int64) * sx_n + _offset(t0 - CACHE_T, sx_t, h0, sx_h, w0, sx_w))
        c_base = cache_ptr + (nb.to(tl.int64) * sc_n + _offset(t0, sc_t, h0, sc_h, w0, sc_w))
    else:
        x_base = x_ptr + (nb.to(tl.int64) * sx_n + (t0 - CACHE_T).to(tl.int64) * sx_t)
        c_base = cache_ptr + (nb.to(tl.int64) * sc_n + t0.to(tl.int64) * sc_t)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if BLOCK_N2 > 0:
        rn2 = pid_n * (BLOCK_N + BLOCK_N2) + BLOCK_N + tl.arange(0, BLOCK_N2)
        n2_ok = rn2 < COUT
        w_cols2 = w_ptr + rn2.to(tl.int64) * sw_o
        acc2 = tl.zeros((BLOCK_M, BLOCK_N2), dtype=tl.float32)
    if KT * KH * KW <= 31:
        # which taps of each row read inside the input: one bit per tap, found once here, so that a K step
        # tests one bit per row instead of five bounds
        taps_ok = tl.zeros_like(h0)
        for j in tl.static_range(KT * KH * KW):
            inside = (m_ok & (t0 + j // (KW * KH) >= 0) & (h0 + (j // KW) % KH >= 0)
                      & (h0 + (j // KW) % KH < H_IN * UP) & (w0 + j % KW >= 0) & (w0 + j % KW < W_IN * UP))
            taps_ok = taps_ok | (inside.to(tl.int32) << j)
    if PACKED:
        for k0 in range(0, KT * KH * KW * CIN, BLOCK_K):
            kk = k0 + rk
            ci = kk % CIN
            tap = kk // CIN
            kw = tap % KW
            kh = (tap // KW) % KH
            kt = tap // (KW * KH)
            k_ok = tap < KT * KH * KW
            if KT * KH * KW <= 31:
                ok = ((taps_ok[:, None] >> tap[None, :]) & 1) != 0
            else:
                ok = (m_ok[:, None] & k_ok[None, :] & (t0[:, None] + kt[None, :] >= 0) & (h0[:, None] + kh[None, :] >= 0)
                      & (h0[:, None] + kh[None, :] < H_IN * UP) & (w0[:, None] + kw[None, :] >= 0)
                      & (w0[:, None] + kw[None, :] < W_IN * UP))
            if JOINED and UP == 1:  # one tensor: a row base plus a per-column offset
                a_ptrs = x_base[:, None] + (kt * sx_t + kh * sx_h + kw * sx_w + ci * sx_c)[None, :]
            elif UP == 1:
                x_k = _offset(kt, sx_t, kh, sx_h, kw, sx_w) + ci.to(tl.int64) * sx_c
                c_k = _offset(kt, sc_t, kh, sc_h, kw, sc_w) + ci.to(tl.int64) * sc_c
                a_ptrs = tl.where(t0[:, None] + kt[None, :] >= CACHE_T, x_base[:, None] + x_k[None, :],
                                  c_base[:, None] + c_k[None, :])
            else:
                hu = h0[:, None] + kh[None, :]
                wu = w0[:, None] + kw[None, :]
                x_k = _offset(hu // UP, sx_h, wu // UP, sx_w, ci[None, :], sx_c) + kt[None, :] * sx_t
                c_k = _offset(hu // UP, sc_h, wu // UP, sc_w, ci[None, :], sc_c) + kt[None, :] * sc_t
                a_ptrs = tl.where(t0[:, None] + kt[None, :] >= CACHE_T, x_base[:, None] + x_k, c_base[:, None] + c_k)
            a = tl.load(a_ptrs, mask=ok & k_ok[None, :], other=0.0)
            w_k = (kt * sw_t + kh * sw_h + kw * sw_w + ci * sw_i)[:, None]
            acc = _mma(a, w_cols[None, :] + w_k, k_ok, n_ok, acc, PRECISION, False, False)
            if BLOCK_N2 > 0:
                acc2 = _mma(a, w_cols2[None, :] + w_k, k_ok, n2_ok, acc2, PRECISION, False, False)
    else:
        a_tile = x_base[:, None] + rk.to(tl.int64)[None, :] * sx_c
        b_tile = w_cols[None, :] + rk[:, None]
        if BLOCK_N2 > 0:
            b_tile2 = w_cols2[None, :] + rk[:, None]
        tap = 0
        kc = 0
        for step in range(KT * KH * KW * tl.cdiv(CIN, BLOCK_K)):
            kw = tap % KW
            kh = (tap // KW) % KH
            kt = tap // (KW * KH)
            if KT * KH * KW <= 31:
                row_ok = ((taps_ok >> tap) & 1) != 0
            else:
                row_ok = (m_ok & (t0 + kt >= 0) & (h0 + kh >= 0) & (h0 + kh < H_IN * UP) & (w0 + kw >= 0)
                          & (w0 + kw < W_IN * UP))
            ci = kc + rk
            if JOINED:  # the cache's frames lie in front of x's, one tensor: no choice to make
                if UP == 1:
                    # the tap's and channel block's offset in 32 bits (``supports``: the largest fits), added to
                    # the tile's pointers made once
                    a_ptrs = a_tile + (kt * sx_t + kh * sx_h + kw * sx_w + kc * sx_c)
                else:
                    # within the frame in 32 bits as well (supports: a frame's extent fits)
                    rows = x_base + (kt * sx_t + (h0 + kh) // UP * sx_h + (w0 + kw) // UP * sx_w).to(tl.int64)
                    a_ptrs = rows[:, None] + ci.to(tl.int64)[None, :] * sx_c
            else:
                # which tensor holds the row's frame, chosen per element: a choice between pointers loses what
                # the compiler knows of their alignment (no vector or asynchronous loads), so this is the slow
                # path, for caches held apart (the time downsampler's pending frames)
                if UP == 1:
                    x_rows = x_base + _offset(kt, sx_t, kh, sx_h, kw, sx_w)
                    c_rows = c_base + _offset(kt, sc_t, kh, sc_h, kw, sc_w)
                else:
                    x_rows = x_base + _offset(kt, sx_t, (h0 + kh) // UP, sx_h, (w0 + kw) // UP, sx_w)
                    c_rows = c_base + _offset(kt, sc_t, (h0 + kh) // UP, sc_h, (w0 + kw) // UP, sc_w)
                a_ptrs = tl.where((t0 + kt >= CACHE_T)[:, None], x_rows[:, None] + ci.to(tl.int64)[None, :] * sx_c,
                                  c_rows[:, None] + ci.to(tl.int64)[None, :] * sc_c)
            c_ok = ci < CIN
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            else:
                a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            if W_FLAT:  # channels-last weight: K offset tap * CIN + channel, added to the tiles' pointers made once
                acc = _mma(a, b_tile + (tap * CIN + kc), c_ok, n_ok, acc, PRECISION, EVEN_K, EVEN_N)
                if BLOCK_N2 > 0:
                    acc2 = _mma(a, b_tile2 + (tap * CIN + kc), c_ok, n2_ok, acc2, PRECISION, EVEN_K, EVEN_N)
            else:
                w_k = (_offset(kt, sw_t, kh, sw_h, kw, sw_w) + ci * sw_i)[:, None]
                acc = _mma(a, w_cols[None, :] + w_k, c_ok, n_ok, acc, PRECISION, EVEN_K, EVEN_N)
                if BLOCK_N2 > 0:
                    acc2 = _mma(a, w_cols2[None, :] + w_k, c_ok, n2_ok, acc2, PRECISION, EVEN_K, EVEN_N)
            # the next step's (tap, channel block), counted rather than divided out of the step
            kc += BLOCK_K
            wrap = kc >= CIN
            tap += wrap.to(tl.int32)
            kc = tl.where(wrap, 0, kc)

    _epilogue(acc, rn, COUT, m_ok, nb, ot, oh, ow, bias_ptr, res_ptr, out_ptr,
              sr_n, sr_c, sr_t, sr_h, sr_w, so_n, so_c, so_t, so_h, so_w, HAS_BIAS, HAS_RES)
    if BLOCK_N2 > 0:
        _epilogue(acc2, rn2, COUT, m_ok, nb, ot, oh, ow, bias_ptr, res_ptr, out_ptr,
                  sr_n, sr_c, sr_t, sr_h, sr_w, so_n, so_c, so_t, so_h, so_w, HAS_BIAS, HAS_RES)


@triton.jit(do_not_specialize=["T_OUT", "H_OUT", "W_OUT", "H_IN", "W_IN", "ZEROS", "CACHE_T", "TILES_W"])
def _narrow_conv3d_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    CIN, T_OUT, H_OUT, W_OUT, H_IN, W_IN, ZEROS, CACHE_T, TILES_W,
    sx_n, sx_c, sx_t, sx_h, sx_w,
    sw_o, sw_i, sw_t, sw_h, sw_w,
    sr_n, sr_c, sr_t, sr_h, sr_w,
    so_n, so_c, so_t, so_h, so_w,
    COUT: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The same conv (stride 1, the cache joined in front of x or absent) for few output channels: the RGB output
    conv, whose 3 channels would fill 3 of the 16 columns of the general kernel's tile, which also reads its input
    once per tap. Here a program's rows are a TILE_H x TILE_W window of input pixels of one frame, and its columns
    are (spatial tap, output channel) pairs: the K loop walks only the time taps and the channels, so an input
    pixel is read once per time tap and window (windows overlap by KH - 1 rows and KW - 1 columns: ~1.3x at 16 x 16),
    and the 27 of 32 columns used make the tile's work. The spatial taps are then summed across rows: output pixel
    (i, j) of the window adds column (dh, dw) of input row (i + dh, j + dw) (``tl.gather``), so a window of
    TILE_H x TILE_W inputs gives (TILE_H - KH + 1) x (TILE_W - KW + 1) outputs; TILES_W windows span a row of them.
    Arguments as the general kernel's, less the cache's (x's strides serve the CACHE_T frames right in front of it)
    and with COUT a constexpr; COUT * KH * KW <= BLOCK_J.
    """
    # one grid axis (the second's 65535 would bound the frames): the windows of a frame, then the frames
    tiles = tl.cdiv(H_OUT, TILE_H - KH + 1) * TILES_W
    pid_s = tl.program_id(0) % tiles
    pid_f = tl.program_id(0) // tiles
    nb = pid_f // T_OUT
    ot = pid_f % T_OUT
    oh0 = (pid_s // TILES_W) * (TILE_H - KH + 1)
    ow0 = (pid_s % TILES_W) * (TILE_W - KW + 1)
    r = tl.arange(0, TILE_H * TILE_W)
    lh = r // TILE_W
    lw = r % TILE_W
    ih = oh0 - PH + lh
    iw = ow0 - PW + lw
    in_ok = (ih >= 0) & (ih < H_IN) & (iw >= 0) & (iw < W_IN)
    t0 = ot - ZEROS  # time tap 0's frame in the sequence cache ++ x (negative: a zero frame)
    rk = tl.arange(0, BLOCK_K)
    rows = x_ptr + (nb.to(tl.int64) * sx_n + _offset(t0 - CACHE_T, sx_t, ih, sx_h, iw, sx_w))
    j = tl.arange(0, BLOCK_J)
    tap = j // COUT
    co = j % COUT
    j_ok = tap < KH * KW
    dh = tap // KW
    dw = tap % KW
    b_tile = w_ptr + (co.to(tl.int64) * sw_o + dh * sw_h + dw * sw_w)[None, :] + rk[:, None] * sw_i

    acc = tl.zeros((TILE_H * TILE_W, BLOCK_J), dtype=tl.float32)
    kt = tl.maximum(-t0, 0)  # the time taps on zero frames are skipped
    kc = 0
    for step in range(kt * tl.cdiv(CIN, BLOCK_K), KT * tl.cdiv(CIN, BLOCK_K)):
        c_ok = kc + rk < CIN
        mask = in_ok[:, None]
        if not EVEN_K:
            mask = mask & c_ok[None, :]
        a = tl.load(rows[:, None] + (kt * sx_t + (kc + rk) * sx_c)[None, :], mask=mask, other=0.0)
        acc = _mma(a, b_tile + (kt * sw_t + kc * sw_i), c_ok, j_ok, acc, PRECISION, EVEN_K, False)
        kc += BLOCK_K
        wrap = kc >= CIN
        kt += wrap.to(tl.int32)
        kc = tl.where(wrap, 0, kc)

    # output pixel r of the window takes column (tap, channel) of input row r + dh * TILE_W + dw; rows past the
    # window's last land only on outputs that are masked
    g = tl.gather(acc, tl.minimum(r[:, None] + (dh * TILE_W + dw)[None, :], TILE_H * TILE_W - 1), 0)
    oh = oh0 + lh
    ow = ow0 + lw
    m_ok = (lh <= TILE_H - KH) & (lw <= TILE_W - KW) & (oh < H_OUT) & (ow < W_OUT)
    o_base = nb.to(tl.int64) * so_n + _offset(ot, so_t, oh, so_h, ow, so_w)
    if HAS_RES:
        r_base = nb.to(tl.int64) * sr_n + _offset(ot, sr_t, oh, sr_h, ow, sr_w)
    for c in tl.static_range(COUT):
        v = tl.sum(tl.where(((co == c) & j_ok)[None, :], g, 0.0), axis=1)
        c64 = tl.full([1], c, tl.int64)  # a channel of a whole NCDHW video lies beyond 2^31 elements
        if HAS_BIAS:
            v += tl.load(bias_ptr + c).to(tl.float32)
        if HAS_RES:
            v += tl.load(res_ptr + r_base + c64 * sr_c, mask=m_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + o_base + c64 * so_c, v.to(out_ptr.dtype.element_ty), mask=m_ok)


# ---------------------------------------------------------------------------
# Block sizes: shape rules on the channel counts (never on frames or pixels).
# ---------------------------------------------------------------------------
BLOCK_M = 128
NUM_STAGES = 3
# SASS instructions per warp in one K step of the main loop besides its tensor-core ones (vaekernels.kernel_report),
# for the spatial convs on tensor cores on the plain path and the narrow kernel. The models' 480x832 and 720x1280
# variants, sm_90 (benchmarks/RESULTS.md): 3x3x3 steps 16 or 32 deep 68-96 (Triton 3.9) / 61-97 (3.6), 64 deep
# 108-136 / 95-121 (each with twice the tensor-core work, so not issue-bound on paper), strided and upsampling convs
# 113-174 / 110-148; ~375 before the rows' offsets and tap bounds left the loop. The 3x3x3 convs' steps up to 32
# deep are held to the issue's aim of 100 on sm_90 (wgmma; sm_80's steps feed its many mma.sync with ldmatrix),
# everything else to a guard against regressions.
LOOP_AIM = 100
LOOP_BUDGET = 180


def _k_block(k, most):
    """The power of two from 16 to ``most`` that pads ``k`` least (the larger on a tie: fewer steps)."""
    sizes = [b for b in (128, 64, 32, 16) if b <= most]
    return min(sizes, key=lambda b: (-(-k // b) * b, -b))


def _n_blocks(cout, split, widest):
    """``(BLOCK_N, BLOCK_N2)``: a program's output channels as one power of two from 16 to 128, or (``split``) that
    plus a half or a quarter of it, at most ``widest`` in all. Chosen by programs x (width + 32), the 32 standing for a program's fixed costs
    (its A tiles, their addresses) in channels, then by fewest programs: 96 channels are 64 + 32, 160 are
    128 + 32, 192 are 128 + 64, 640 are four programs of 128 + 32, 1024 eight of 128."""
    shapes = [(n, n2) for n in (128, 64, 32, 16) for n2 in ((0, n // 2, n // 4) if split else (0,))
              if (n2 == 0 or n2 >= 16) and n + n2 <= widest]
    return min(shapes, key=lambda s: (-(-cout // sum(s)) * (sum(s) + 32), -(-cout // sum(s))))


def config(cin, cout, taps, dtype, precision, plain=True, interpret_rows=None):
    """The kernel's tile constexprs for a GPU (BLOCK_M is always 128) and its ``num_warps``. ``plain``: the cache
    is joined (or absent) and the output and residual are channels-last, as in the models' inner layers.

    Checked with ptxas for sm_80 and sm_90 on the model's channel counts (see AOT_CASES): no spills,
    shared memory within budget, tensor cores except for ieee fp32. ``interpret_rows`` (the output positions, for
    the interpreter): the same paths and N tiles, with one M tile of up to 4096 rows and K steps up to 128 deep
    (the interpreter's cost is per program and per loop step, not per element).
    """
    fma = dtype == torch.float32 and precision == "ieee"  # no tensor cores: a deeper K step only adds registers
    interpret = interpret_rows is not None
    packed = cin < 16  # the RGB input (3 channels; Wan2.2's patchified 12): taps share the K tiles
    plain = plain and not packed
    # Registers bound the tiles. Two accumulators cost FMA dots a full second set of operand registers: one tile
    # there; float32 (tf32) operands take twice the registers of 16-bit ones: 160 or 192 columns spill. Packed
    # taps and a cache apart (per-element addresses) and outputs whose pixels are adjacent (NCDHW: the tile is
    # transposed on its way out) take registers of their own: one tile of at most 32 columns (16 on FMA) there.
    block_n, block_n2 = _n_blocks(cout, split=not fma and plain,
                                  widest=(16 if fma else 32) if not plain else 128 if dtype == torch.float32 else 192)
    width = block_n + block_n2
    # fp32 (tf32) tiles take twice the shared memory per stage: half the depth keeps 3 stages; 192 columns with
    # 64-deep 16-bit steps spill on sm_80 (255 registers): 32-deep there
    most_k = 128 if interpret else 16 if fma else 32 if dtype == torch.float32 or width > 160 or not plain else 64
    block_k = _k_block(cin * taps if packed else cin, most_k)
    if not interpret and not packed and cin % block_k:  # a masked K: 16 deep (32 spills under Triton 3.6)
        block_k = 16
    # 8 warps for 64-deep steps, for 64 columns or more, for float32 and off the plain path: with 4, ptxas spills
    # on tiles of 128 x 64 channels (and on float32 ones), and each thread's share of the A tile's loads doubles
    warps = 8 if width >= 64 or block_k == 64 or not plain or dtype == torch.float32 else 4
    return {"PACKED": packed, "EVEN_K": packed or cin % block_k == 0, "EVEN_N": cout % width == 0,
            "BLOCK_M": min(triton.next_power_of_2(interpret_rows), 4096) if interpret else BLOCK_M, "BLOCK_N": block_n,
            "BLOCK_N2": block_n2, "BLOCK_K": block_k}, warps


# The narrow kernel: convs whose output channels times spatial taps fit these columns (the RGB output conv: 3 x 9 =
# 27 of 32) take it when their cache is joined, stride 1, no upsampling
NARROW_COLUMNS = 32
NARROW_TILE = (16, 16)  # input window of a program: 14 x 14 outputs of a 3x3 conv from 256 rows


def narrow_config(cin, cout, taps_hw, dtype, precision):
    """The narrow kernel's tile constexprs and ``num_warps`` (the interpreter runs the GPU's windows, so that its
    tests cross their seams)."""
    fma = dtype == torch.float32 and precision == "ieee"
    tile_h, tile_w = NARROW_TILE
    if fma:  # FMA dots hold both operands in registers: half the window (8 x 16) does not spill
        tile_h //= 2
    block_k = _k_block(cin, 16 if fma else 32)
    if cin % block_k:  # a masked K: 16 deep, as the general kernel's
        block_k = 16
    # tf32 on 4 warps spills (its operands take twice the registers); FMA on 8 warps (ptxas then caps registers)
    return {"EVEN_K": cin % block_k == 0, "TILE_H": tile_h, "TILE_W": tile_w,
            "BLOCK_J": max(16, triton.next_power_of_2(cout * taps_hw[0] * taps_hw[1])), "BLOCK_K": block_k}, \
        8 if dtype == torch.float32 and not fma else 4


def _launch_narrow(x, c, zeros, weight, bias, residual, out, padding, precision, blocks, warps):
    """Run the narrow kernel (see it) on ``narrow_config``'s tiles; ``c`` cache frames lie right in front of x."""
    n, cin, _, h, w = x.shape
    cout, _, kt, kh, kw = weight.shape
    _, _, t_out, h_out, w_out = out.shape
    tiles_h = triton.cdiv(h_out, blocks["TILE_H"] - kh + 1)
    tiles_w = triton.cdiv(w_out, blocks["TILE_W"] - kw + 1)
    programs = n * t_out * tiles_h * tiles_w
    if programs >= 2 ** 31:
        raise ValueError(f"causal_conv3d (triton): {programs} windows of output pixels; at most 2^31 - 1 per call")
    args = (x, weight, weight if bias is None else bias, out if residual is None else residual, out,
            cin, t_out, h_out, w_out, h, w, zeros, c, tiles_w,
            *x.stride(), *weight.stride(), *(out if residual is None else residual).stride(), *out.stride())
    constexprs = dict(COUT=cout, KT=kt, KH=kh, KW=kw, PH=padding[0], PW=padding[1], HAS_BIAS=bias is not None,
                      HAS_RES=residual is not None, PRECISION=precision, **blocks)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        name = _case_name(x.dtype, precision, cin, cout, (kt, kh, kw), (1, 1, 1), 1, blocks, residual is not None)
        tensor_cores = x.dtype != torch.float32 or precision == "tf32"
        launch(_narrow_conv3d_kernel, (programs,), args, constexprs, num_warps=warps, name=name,
               num_stages=NUM_STAGES, tensor_cores=tensor_cores, loop_budget=LOOP_BUDGET if tensor_cores else None)
    return out


def _case_name(dtype, precision, cin, cout, kernel, stride, up, blocks, residual):
    """What the kernel report calls a launch's compile case (the narrow kernel's: "j" and its columns)."""
    short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: f"fp32 {precision}"}[dtype]
    if "BLOCK_J" in blocks:
        tile = f"narrow j{blocks['BLOCK_J']}"
    else:
        tile = f"n{blocks['BLOCK_N']}" + (f"+{blocks['BLOCK_N2']}" if blocks["BLOCK_N2"] else "")
    what = "upsample_conv2d" if up > 1 else "causal_conv3d"
    shape = "x".join(map(str, kernel)) + ("" if tuple(stride) == (1, 1, 1) else "/" + "x".join(map(str, stride)))
    return f"{what} {shape} {cin}->{cout} {short} {tile} k{blocks['BLOCK_K']}" + (" +res" if residual else "")


def _precision(x):
    """float32 dots as PyTorch would run this conv on ``x``'s device: on CUDA, TF32 while cuDNN may use it for
    convs (``torch.backends.cudnn.allow_tf32``, on by default), else IEEE; on CPU (the interpreter) IEEE, as
    PyTorch's CPU convs. 16-bit dots ignore it."""
    if x.dtype != torch.float32:
        return "tf32"
    return "tf32" if x.device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "ieee"


def launch_conv(x, cache, zeros, weight, bias, residual, out, stride, padding, up=1):
    """Run the kernel: ``out = conv(zeros ++ cache ++ x) + bias + residual`` (see the kernel).

    ``weight`` is ``[Cout, Cin, kt, kh, kw]``; ``padding`` is ``(ph, pw)`` on the (upsampled) grid, before the
    first row and column (after the last: what ``out``'s size asks for).
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
    joined = c == 0 or (cache.stride() == x.stride() and cache.dtype == x.dtype and
                        cache.data_ptr() + c * x.stride(2) * x.element_size() == x.data_ptr())
    precision = _precision(x)
    if joined and up == 1 and tuple(stride) == (1, 1, 1) and 1 < kh * kw and cout * kh * kw <= NARROW_COLUMNS:
        blocks, warps = narrow_config(cin, cout, (kh, kw), x.dtype, precision)
        if 2 * kh <= blocks["TILE_H"] and 2 * kw <= blocks["TILE_W"]:  # a window gives at least half its rows
            return _launch_narrow(x, c, zeros, weight, bias, residual, out, padding, precision, blocks, warps)
    plain = joined and out.stride(1) == 1 and (residual is None or residual.stride(1) == 1)
    blocks, warps = config(cin, cout, kt * kh * kw, x.dtype, precision, plain,
                           interpret_rows=m if interpreted(x) else None)
    grid = (triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(cout, blocks["BLOCK_N"] + blocks["BLOCK_N2"]))
    args = (x, cache, weight, weight if bias is None else bias, out if residual is None else residual, out,
            m, cin, cout, out.shape[2], out.shape[3], out.shape[4], h, w, zeros, c,
            *x.stride(), *cache.stride(), *weight.stride(), *(out if residual is None else residual).stride(),
            *out.stride())
    constexprs = dict(KT=kt, KH=kh, KW=kw, ST=stride[0], SH=stride[1], SW=stride[2], PH=padding[0], PW=padding[1],
                      UP=up, HAS_BIAS=bias is not None, HAS_RES=residual is not None, PRECISION=precision,
                      JOINED=joined, W_FLAT=weight.is_contiguous(memory_format=torch.channels_last_3d), **blocks)
    tensor_cores = x.dtype != torch.float32 or precision == "tf32"
    budget = None
    if tensor_cores and plain and kh * kw > 1 and not blocks["PACKED"]:
        aimed = (kt, kh, kw) == (3, 3, 3) and blocks["BLOCK_K"] <= 32
        budget = {90: LOOP_AIM, None: LOOP_BUDGET} if aimed else LOOP_BUDGET
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        launch(_causal_conv3d_kernel, grid, args, constexprs, num_warps=warps, num_stages=NUM_STAGES,
               name=_case_name(x.dtype, precision, cin, cout, (kt, kh, kw), stride, up, blocks, residual is not None)
               + ("" if joined else " (cache apart)"),
               tensor_cores=tensor_cores, loop_budget=budget)
    return out


def supports(x, weight, *args):
    """Why these kernels cannot take these arguments, or None: a tap's and channel block's offset within x must fit 32
    bits (the K loops add it to 64-bit row offsets; a frame of over a billion elements, or an NCDHW x whose channels
    lie 2^31 elements apart, is beyond it)."""
    kt, kh, kw = weight.shape[2:]
    reach = (kt - 1) * x.stride(2) + (kh - 1) * x.stride(3) + (kw - 1) * x.stride(4) + (x.shape[1] - 1) * x.stride(1)
    if reach >= 2 ** 31:
        return f"causal_conv3d's kernel: its taps and channels span {reach} elements of x; at most 2^31 - 1"
    return None


def causal_conv3d_data_grad(grad, weight, front, padding):
    """The torch backend's conv of copies (the flipped weight, the padded gradient), run by this backend's conv."""
    return torch_causal_conv3d_data_grad(grad, weight, front, padding, causal_conv3d)


def causal_conv3d(x, weight, bias, cache, stride, padding, residual, out):
    c = 0 if cache is None else cache.shape[2]
    if out is None:
        out = empty_output(x, conv_output_shape(x.shape, weight.shape, c, stride, padding))
    if out.shape[2] == 0:
        return out
    zeros = max(0, 2 * padding[0] - c)
    if zero_led_stride2(weight, stride, padding):
        # the downsampler's 4x4 weight whose first row and column are zero (layers.blocks.Resample) is upstream's
        # stride-2 3x3 conv padded on the right and bottom only: run that (9 taps, not 16; the pad is a mask), its
        # padding one less than the 4x4's (a split's bordered band pads 2 rows: layers.blocks.Resample)
        return launch_conv(x, cache, zeros, weight[:, :, :, 1:, 1:], bias, residual, out, stride,
                           (padding[1] - 1, padding[2] - 1))
    return launch_conv(x, cache, zeros, weight, bias, residual, out, stride, padding[1:])


_zero_led: dict[int, tuple] = {}  # id(weight) -> (weak reference, version, answer)


def zero_led_stride2(weight, stride, padding):
    """Whether this is a stride-2 4x4 conv with padding of at least 1 whose first row and column of weights are zero.
    Read once per weight tensor and version (the answer for a tensor that has died is dropped with it)."""
    if tuple(weight.shape[2:]) != (1, 4, 4) or tuple(stride[1:]) != (2, 2) or min(padding[1:]) < 1:
        return False
    if weight.is_inference():  # no version counter to key the answer on: read it each time
        return not bool(weight[:, :, :, 0, :].any() or weight[:, :, :, :, 0].any())
    key = id(weight)
    seen = _zero_led.get(key)
    if seen is None or seen[0]() is not weight or seen[1] != weight._version:
        answer = not bool(weight[:, :, :, 0, :].any() or weight[:, :, :, :, 0].any())
        seen = (weakref.ref(weight, lambda _, key=key: _zero_led.pop(key, None)), weight._version, answer)
        _zero_led[key] = seen
    return seen[2]


# ---------------------------------------------------------------------------
# Ahead-of-time compile cases beyond the models' (see aot_cases); the checker compiles them for sm_80 and sm_90.
# ---------------------------------------------------------------------------
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# odd channel counts make no stride 16-divisible: only the pointers are (fresh tensors), and channel strides are 1
# (channels-last), which the JIT turns into constants
_UNIT_STRIDES = {"sx_c": 1, "sc_c": 1, "sw_i": 1, "sr_c": 1, "so_c": 1}


def _precisions():
    """The (dtype, precision) pairs compiled: float32 with TF32 dots and IEEE ones, the 16-bit dtypes once."""
    return [(dtype, precision) for dtype in _DTYPES for precision in
            (("ieee", "tf32") if dtype == torch.float32 else ("tf32",))]


def _aot_case(kernel, name, dtype, precision, constexprs, warps, divisible=()):
    """A compile case of ``kernel``: its pointers 16-byte aligned (fresh tensors), the integer arguments named in
    ``divisible`` 16-divisible, the other integers i32."""
    names = kernel.arg_names
    signature = {a: "constexpr" if a in constexprs else f"*{_DTYPES[dtype]}" if a.endswith("_ptr") else "i32"
                 for a in names}
    return {"name": name, "fn": kernel, "signature": signature, "constexprs": constexprs,
            "attrs": {(names.index(a),): [["tt.divisibility", 16]] for a, kind in signature.items()
                      if kind.startswith("*") or kind == "i32" and a in divisible},
            "num_warps": warps, "num_stages": NUM_STAGES,
            "tensor_cores": dtype != torch.float32 or precision == "tf32", "loop_budget": None}


def aot_cases(name, geometry, pairs=((20, 13), (5, 40)), joined=False):
    """Compile cases beyond the models' own (which vaekernels.kernel_report records from whole clips): one per
    (dtype, precision) for each ``(cin, cout)`` pair, for a conv ``geometry`` (the KT..UP constexprs, and HAS_RES
    where it differs), with a cache held apart unless ``joined``. The default pairs take the paths the models' channel counts do
    not: a masked K and N (20 -> 13) and packed taps into a split tile (5 -> 40)."""
    taps = geometry["KT"] * geometry["KH"] * geometry["KW"]
    kernel = tuple(geometry[k] for k in ("KT", "KH", "KW"))
    stride = tuple(geometry[k] for k in ("ST", "SH", "SW"))
    cases = []
    for dtype, precision in _precisions():
        for cin, cout in pairs:
            blocks, warps = config(cin, cout, taps, dtype, precision, plain=joined)
            constexprs = {**_UNIT_STRIDES, "HAS_BIAS": True, "HAS_RES": True, "JOINED": joined, "W_FLAT": True,
                          **geometry, "PRECISION": precision, **blocks}
            case_name = f"{name}: " + _case_name(dtype, precision, cin, cout, kernel, stride, geometry["UP"], blocks,
                                                 True) + ("" if joined else " (cache apart)")
            cases.append(_aot_case(_causal_conv3d_kernel, case_name, dtype, precision, constexprs, warps))
    return cases


def narrow_aot_cases(pairs=((96, 3), (20, 3))):
    """The narrow kernel's compile cases beyond the models' own (bf16, no residual): each dtype and precision, a K
    that divides the channels (96) and one masked (20), with a residual."""
    cases = []
    for dtype, precision in _precisions():
        for cin, cout in pairs:
            blocks, warps = narrow_config(cin, cout, (3, 3), dtype, precision)
            constexprs = {"sx_c": 1, "sw_i": 1, "COUT": cout, "KT": 3, "KH": 3, "KW": 3, "PH": 1, "PW": 1,
                          "HAS_BIAS": True, "HAS_RES": True, "PRECISION": precision, **blocks}
            # x's and the weight's strides are 16-divisible when the channels are
            divisible = [a for a in _narrow_conv3d_kernel.arg_names if cin % 16 == 0 and a[:3] in ("sx_", "sw_")]
            case_name = "causal_conv3d: " + _case_name(dtype, precision, cin, cout, (3, 3, 3), (1, 1, 1), 1, blocks,
                                                       True)
            cases.append(_aot_case(_narrow_conv3d_kernel, case_name, dtype, precision, constexprs, warps, divisible))
    return cases


AOT_CASES = aot_cases("causal_conv3d", dict(KT=3, KH=3, KW=3, ST=1, SH=1, SW=1, PH=1, PW=1, UP=1)) \
    + narrow_aot_cases()
