"""``rms_norm_silu``: the RMS norm over channels with SiLU fused, in one read and one write."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import select
from ..shapes import empty_output


def _run(x, gamma, silu, eps, out):
    return select("rms_norm_silu", x, gamma, silu, eps, out).rms_norm_silu(x, gamma, silu, eps, out)


@torch.library.custom_op("vaekernels::rms_norm_silu", mutates_args=())
def _rms_norm_silu(x: Tensor, gamma: Tensor, silu: bool, eps: float) -> Tensor:
    return _run(x, gamma, silu, eps, None)


@_rms_norm_silu.register_fake
def _(x, gamma, silu, eps):
    return empty_output(x, x.shape)


@torch.library.custom_op("vaekernels::rms_norm_silu_out", mutates_args=("out",))
def _rms_norm_silu_out(x: Tensor, gamma: Tensor, silu: bool, eps: float, out: Tensor) -> None:
    _run(x, gamma, silu, eps, out)


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
