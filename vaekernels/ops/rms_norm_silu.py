"""``rms_norm_silu``: the RMS norm over channels with SiLU fused, in one read and one write."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import select
from ..shapes import empty_output
from . import _autograd


def _run(x, gamma, silu, eps, out):
    return select("rms_norm_silu", x, gamma, silu, eps, out).rms_norm_silu(x, gamma, silu, eps, out)


@torch.library.custom_op("vaekernels::rms_norm_silu", mutates_args=())
def _rms_norm_silu(x: Tensor, gamma: Tensor, silu: bool, eps: float) -> Tensor:
    return _run(x, gamma, silu, eps, None)


@_rms_norm_silu.register_fake
def _(x, gamma, silu, eps):
    return empty_output(x, x.shape)


@torch.library.custom_op("vaekernels::rms_norm_silu_backward", mutates_args=())
def _rms_norm_silu_backward(grad: Tensor, x: Tensor, gamma: Tensor, silu: bool, eps: float) -> tuple[Tensor, Tensor]:
    return select("rms_norm_silu_backward", grad, x, gamma, silu, eps).rms_norm_silu_backward(grad, x, gamma, silu, eps)


@_rms_norm_silu_backward.register_fake
def _(grad, x, gamma, silu, eps):
    return empty_output(x, x.shape), gamma.new_empty(gamma.shape)


def _setup_context(ctx, inputs, output):
    x, gamma, silu, eps = inputs
    ctx.save_for_backward(x, gamma)
    ctx.silu, ctx.eps = silu, eps


def _backward(ctx, grad):
    # both gradients come from one pass over x and grad (gamma's is a by-product of x's): one kernel per backend
    x, gamma = ctx.saved_tensors
    g_x, g_gamma = _rms_norm_silu_backward(grad, x, gamma, ctx.silu, ctx.eps)
    return g_x if ctx.needs_input_grad[0] else None, g_gamma if ctx.needs_input_grad[1] else None, None, None


# gradients through the op (the ``out=`` variant below stays inference-only: it writes into a given buffer)
_rms_norm_silu.register_autograd(_backward, setup_context=_setup_context)


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
    Statistics are computed in float32 whatever the input dtype. With ``out`` (x's shape, any strides) the result
    is written there and ``out`` is returned (when autograd records the call, as a copy of the functional result).
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
    if _autograd.records(x, gamma):
        return out.copy_(_rms_norm_silu(x, gamma, bool(silu), float(eps)))
    _rms_norm_silu_out(x, gamma, bool(silu), float(eps), out)
    return out
