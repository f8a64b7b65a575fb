"""``dup_up3d``: Wan2.2's parameter-free upsampling shortcut (the official ``DupUp3D``).

The official module repeats each input channel ``out*factor/C`` times and unfolds the repeats into
``ft x fs x fs`` blocks (the inverse of ``avg_down3d``'s folding); on the clip's first chunk it drops the first
``ft - 1`` frames. That trim is a rule about the clip's first frame, so here it is an argument: ``drop`` frames
are left out in front (the caller passes ``ft - 1`` for the chunk that starts the clip, 0 for the others).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import select
from ..shapes import dup_up3d_output_shape, empty_output
from . import _autograd


@torch.library.custom_op("vaekernels::dup_up3d", mutates_args=())
def _dup_up3d(x: Tensor, factor_t: int, factor_s: int, out_channels: int, drop: int) -> Tensor:
    return select("dup_up3d", x, factor_t, factor_s, out_channels, drop).dup_up3d(x, factor_t, factor_s,
                                                                                 out_channels, drop)


@_dup_up3d.register_fake
def _(x, factor_t, factor_s, out_channels, drop):
    return empty_output(x, dup_up3d_output_shape(x.shape, factor_t, factor_s, out_channels, drop))


# grad of x: recomputed (ops/_autograd.py)
_autograd.register(_dup_up3d, "dup_up3d", (0,))


def dup_up3d(x: Tensor, *, factor_t: int, factor_s: int, out_channels: int, drop: int = 0) -> Tensor:
    """``[N,C,T,h,w] -> [N,out_channels,T*factor_t-drop,h*factor_s,w*factor_s]``.

    Output channel ``o`` at block offset ``q`` (offsets ordered t, h, w) of the block of input position
    ``(t, i, j)`` is input channel ``(o*factor + q) // repeats`` there, ``factor = factor_t*factor_s**2``,
    ``repeats = out_channels*factor/C``; the first ``drop`` output frames are left out.
    """
    if x.dim() != 5:
        raise ValueError(f"dup_up3d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if min(factor_t, factor_s, out_channels) < 1:
        raise ValueError(f"dup_up3d: factor_t, factor_s and out_channels must be positive, got {factor_t}, "
                         f"{factor_s}, {out_channels}")
    factor = factor_t * factor_s * factor_s
    if (out_channels * factor) % x.shape[1]:
        raise ValueError(f"dup_up3d: C ({x.shape[1]}) must divide out_channels * factor ({out_channels} * {factor})")
    if not 0 <= drop <= x.shape[2] * factor_t:
        raise ValueError(f"dup_up3d: drop must be in [0, T*factor_t={x.shape[2] * factor_t}], got {drop}")
    return _dup_up3d(x, int(factor_t), int(factor_s), int(out_channels), int(drop))
