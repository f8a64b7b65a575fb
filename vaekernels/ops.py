"""The public ops: the contract every backend implements.

Each op is registered with ``torch.library`` (schema + fake implementation), so it is
opaque to ``torch.compile`` and checked by ``torch.library.opcheck``. Ops that a producer
may write straight into a caller's buffer (the engine's causal-cache buffers) also have an
``_out`` variant that mutates ``out``; the Python functions below pick the variant.

All activations are ``[N, C, T, H, W]``; the model keeps them channels-last-3d, and an op's
output follows the memory format of its input ``x``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .backends import select

__all__ = [
    "causal_conv3d",
    "rms_norm_silu",
    "spatial_attention",
    "upsample_conv2d",
    "conv_output_shape",
]


# ---------------------------------------------------------------------------
# Shape rules shared by the fake implementations and the callers.
# ---------------------------------------------------------------------------
def conv_output_shape(x_shape, weight_shape, cache_frames, stride, padding):
    """Output shape of ``causal_conv3d``.

    In time the conv sees ``max(0, 2*pt - cache_frames)`` zero frames, the cache, then ``x``,
    and pads nothing after; in space it pads ``ph``/``pw`` on both sides.
    """
    n, _, t, h, w = x_shape
    cout, _, kt, kh, kw = weight_shape
    st, sh, sw = stride
    pt, ph, pw = padding
    t_in = max(0, 2 * pt - cache_frames) + cache_frames + t
    t_out = max(0, (t_in - kt) // st + 1) if t_in >= kt else 0
    return (n, cout, t_out, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


def output_format(x: Tensor):
    """The memory format of an op's output: channels-last-3d when ``x`` is, else contiguous."""
    return torch.channels_last_3d if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) \
        and not x.is_contiguous() else torch.contiguous_format


def empty_output(x: Tensor, shape) -> Tensor:
    """An uninitialised output of ``shape`` in ``x``'s dtype and memory format (what every backend returns)."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))


def _check_conv_args(x, weight, bias, cache, stride, padding, residual):
    if x.dim() != 5:
        raise ValueError(f"causal_conv3d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"causal_conv3d: weight must be [Cout, {x.shape[1]}, kt, kh, kw], got {tuple(weight.shape)}")
    if len(stride) != 3 or len(padding) != 3:
        raise ValueError(f"causal_conv3d: stride and padding take 3 values (t, h, w), got {stride}, {padding}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"causal_conv3d: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if cache is not None:
        if cache.dim() != 5 or cache.shape[:2] != x.shape[:2] or cache.shape[3:] != x.shape[3:] or cache.shape[2] > 2:
            raise ValueError(f"causal_conv3d: cache must be [N, C, <=2, H, W] matching x {tuple(x.shape)}, "
                             f"got {tuple(cache.shape)}")
    shape = conv_output_shape(x.shape, weight.shape, 0 if cache is None else cache.shape[2], stride, padding)
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"causal_conv3d: residual must have the output's shape {shape}, got {tuple(residual.shape)}")
    return shape


# ---------------------------------------------------------------------------
# causal_conv3d
# ---------------------------------------------------------------------------
@torch.library.custom_op("vaekernels::causal_conv3d", mutates_args=())
def _causal_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor], cache: Optional[Tensor],
                   stride: Sequence[int], padding: Sequence[int], residual: Optional[Tensor]) -> Tensor:
    return select(x).causal_conv3d(x, weight, bias, cache, tuple(stride), tuple(padding), residual, None)


@_causal_conv3d.register_fake
def _(x, weight, bias, cache, stride, padding, residual):
    return empty_output(x, conv_output_shape(x.shape, weight.shape, 0 if cache is None else cache.shape[2],
                                                  stride, padding))


@torch.library.custom_op("vaekernels::causal_conv3d_out", mutates_args=("out",))
def _causal_conv3d_out(x: Tensor, weight: Tensor, bias: Optional[Tensor], cache: Optional[Tensor],
                       stride: Sequence[int], padding: Sequence[int], residual: Optional[Tensor], out: Tensor) -> None:
    select(x).causal_conv3d(x, weight, bias, cache, tuple(stride), tuple(padding), residual, out)


@_causal_conv3d_out.register_fake
def _(x, weight, bias, cache, stride, padding, residual, out):
    return None


def causal_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, cache: Optional[Tensor] = None,
                  stride=(1, 1, 1), padding=(0, 0, 0), residual: Optional[Tensor] = None,
                  out: Optional[Tensor] = None) -> Tensor:
    """Causal 3-D convolution: ``[N,Cin,T,H,W] -> [N,Cout,T',H',W']``.

    ``padding=(pt, ph, pw)`` has the CausalConv3d meaning: ``2*pt`` zero frames in front of the
    clip (fewer by the number of ``cache`` frames, ``cache`` being the last <=2 input frames of the
    previous chunk, ``[N,Cin,<=2,H,W]``), none after; ``ph``/``pw`` zeros on both sides in space.
    ``residual`` (the output's shape) is added to the result. With ``out`` (any strided tensor of
    the output's shape) the result is written there and ``out`` is returned.
    """
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    shape = _check_conv_args(x, weight, bias, cache, stride, padding, residual)
    if out is None:
        return _causal_conv3d(x, weight, bias, cache, stride, padding, residual)
    if tuple(out.shape) != shape:
        raise ValueError(f"causal_conv3d: out must have shape {shape}, got {tuple(out.shape)}")
    _causal_conv3d_out(x, weight, bias, cache, stride, padding, residual, out)
    return out


# ---------------------------------------------------------------------------
# rms_norm_silu
# ---------------------------------------------------------------------------
@torch.library.custom_op("vaekernels::rms_norm_silu", mutates_args=())
def _rms_norm_silu(x: Tensor, gamma: Tensor, silu: bool, eps: float) -> Tensor:
    return select(x).rms_norm_silu(x, gamma, silu, eps, None)


@_rms_norm_silu.register_fake
def _(x, gamma, silu, eps):
    return empty_output(x, x.shape)


@torch.library.custom_op("vaekernels::rms_norm_silu_out", mutates_args=("out",))
def _rms_norm_silu_out(x: Tensor, gamma: Tensor, silu: bool, eps: float, out: Tensor) -> None:
    select(x).rms_norm_silu(x, gamma, silu, eps, out)


@_rms_norm_silu_out.register_fake
def _(x, gamma, silu, eps, out):
    return None


def rms_norm_silu(x: Tensor, gamma: Tensor, *, silu: bool = True, eps: float = 1e-12,
                  out: Optional[Tensor] = None) -> Tensor:
    """``x / max(||x||_2 over dim 1, eps) * sqrt(C) * gamma``, then SiLU when ``silu``.

    ``x`` is ``[N, C, ...]``; ``gamma`` has C elements (any shape, e.g. ``(C,1,1,1)``).
    Statistics are computed in float32 whatever the input dtype.
    """
    if x.dim() < 2:
        raise ValueError(f"rms_norm_silu: x must be [N, C, ...], got shape {tuple(x.shape)}")
    if gamma.numel() != x.shape[1]:
        raise ValueError(f"rms_norm_silu: gamma must have {x.shape[1]} elements, got shape {tuple(gamma.shape)}")
    gamma = gamma.reshape(-1)
    if out is None:
        return _rms_norm_silu(x, gamma, bool(silu), float(eps))
    if out.shape != x.shape:
        raise ValueError(f"rms_norm_silu: out must have shape {tuple(x.shape)}, got {tuple(out.shape)}")
    _rms_norm_silu_out(x, gamma, bool(silu), float(eps), out)
    return out


# ---------------------------------------------------------------------------
# spatial_attention
# ---------------------------------------------------------------------------
@torch.library.custom_op("vaekernels::spatial_attention", mutates_args=())
def _spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return select(q).spatial_attention(q, k, v)


@_spatial_attention.register_fake
def _(q, k, v):
    return q.new_empty(q.shape)


def spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head attention ``softmax(q k^T / sqrt(D)) v`` over ``[N, L, D]`` tensors."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"spatial_attention: q, k, v must be equal [N, L, D] shapes, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return _spatial_attention(q, k, v)


# ---------------------------------------------------------------------------
# upsample_conv2d
# ---------------------------------------------------------------------------
@torch.library.custom_op("vaekernels::upsample_conv2d", mutates_args=())
def _upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return select(x).upsample_conv2d(x, weight, bias)


@_upsample_conv2d.register_fake
def _(x, weight, bias):
    n, _, t, h, w = x.shape
    return empty_output(x, (n, weight.shape[0], t, 2 * h, 2 * w))


def upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Nearest 2x upsampling in H and W, then a 3x3 conv (padding 1), frame by frame.

    ``x`` ``[N,Cin,T,H,W]``, ``weight`` ``[Cout,Cin,3,3]`` -> ``[N,Cout,T,2H,2W]``.
    """
    if x.dim() != 5:
        raise ValueError(f"upsample_conv2d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"upsample_conv2d: weight must be [Cout, {x.shape[1]}, 3, 3], got {tuple(weight.shape)}")
    return _upsample_conv2d(x, weight, bias)

