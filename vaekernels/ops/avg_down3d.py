"""``avg_down3d``: Wan2.2's parameter-free downsampling shortcut (the official ``AvgDown3D``), over a cached history.

The official module pads ``(ft - T % ft) % ft`` zero frames in front of its input, folds each ``ft x fs x fs``
block into channels (input channel first, then the t, h, w offsets) and averages groups of consecutive channels
down to ``out_channels``. Over a whole clip of ``1 + ft*k`` frames that front padding is ``ft - 1`` zero frames in
front of the clip; chunk by chunk, the frames that do not fill a group wait for the next chunk. This op takes
both as arguments, as ``causal_conv3d`` takes its history: it folds the sequence "``zeros`` zero frames, then
``cache``, then ``x``", one output frame per whole group of ``factor_t`` frames, and leaves the trailing frames
that do not fill a group unread (the caller keeps them as the next call's ``cache``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import select
from ..shapes import avg_down3d_output_shape, empty_output
from . import _autograd


@torch.library.custom_op("vaekernels::avg_down3d", mutates_args=())
def _avg_down3d(x: Tensor, cache: Optional[Tensor], zeros: int, factor_t: int, factor_s: int,
                out_channels: int) -> Tensor:
    args = (x, cache, zeros, factor_t, factor_s, out_channels)
    return select("avg_down3d", *args).avg_down3d(*args)


@_avg_down3d.register_fake
def _(x, cache, zeros, factor_t, factor_s, out_channels):
    frames = 0 if cache is None else cache.shape[2]
    return empty_output(x, avg_down3d_output_shape(x.shape, frames, zeros, factor_t, factor_s, out_channels))


# grads of x and cache: recomputed (ops/_autograd.py)
_autograd.register(_avg_down3d, "avg_down3d", (0, 1))


def avg_down3d(x: Tensor, *, factor_t: int, factor_s: int, out_channels: int, cache: Optional[Tensor] = None,
               zeros: int = 0) -> Tensor:
    """``[N,C,T,H,W] -> [N,out_channels,(zeros+cache frames+T)//factor_t,H/factor_s,W/factor_s]``.

    Output channel ``o`` at output frame ``j`` averages the ``C*factor/out_channels`` block entries
    ``k = o*group .. o*group+group-1`` (entry k: input channel ``k // factor`` at block offset ``k % factor``,
    offsets ordered t, h, w; ``factor = factor_t*factor_s**2``) of the block of sequence frames
    ``j*factor_t .. j*factor_t+factor_t-1``. ``zeros`` plus the cache's frames must be fewer than ``factor_t``.
    """
    if x.dim() != 5:
        raise ValueError(f"avg_down3d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if min(factor_t, factor_s, out_channels) < 1:
        raise ValueError(f"avg_down3d: factor_t, factor_s and out_channels must be positive, got {factor_t}, "
                         f"{factor_s}, {out_channels}")
    n, c, _, h, w = x.shape
    factor = factor_t * factor_s * factor_s
    if (c * factor) % out_channels:
        raise ValueError(f"avg_down3d: out_channels ({out_channels}) must divide C * factor ({c} * {factor})")
    if h % factor_s or w % factor_s:
        raise ValueError(f"avg_down3d: H and W must be multiples of factor_s={factor_s}, got H={h}, W={w}")
    frames = 0
    if cache is not None:
        if cache.dim() != 5 or cache.shape[:2] != x.shape[:2] or cache.shape[3:] != x.shape[3:]:
            raise ValueError(f"avg_down3d: cache must be [N, C, frames, H, W] matching x {tuple(x.shape)}, got "
                             f"{tuple(cache.shape)}")
        frames = cache.shape[2]
    if zeros < 0 or zeros + frames >= factor_t:
        raise ValueError(f"avg_down3d: zeros ({zeros}) plus cache frames ({frames}) must be in [0, factor_t="
                         f"{factor_t})")
    return _avg_down3d(x, cache, int(zeros), int(factor_t), int(factor_s), int(out_channels))
