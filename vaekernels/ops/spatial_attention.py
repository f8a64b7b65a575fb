"""``spatial_attention``: single-head attention over the positions of each frame."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import select
from . import _autograd


@torch.library.custom_op("vaekernels::spatial_attention", mutates_args=())
def _spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return select("spatial_attention", q, k, v).spatial_attention(q, k, v)


@_spatial_attention.register_fake
def _(q, k, v):
    return q.new_empty(q.shape)


# grads of q, k, v: the torch backend's SDPA recomputed under autograd (ops/_autograd.py). No fused backward kernel
# yet (the forward keeps no softmax statistics to reuse): a forward more, and on CPU and for head dims the flash
# kernels do not take, SDPA's math path holds the L x L scores of a frame.
_autograd.register(_spatial_attention, "spatial_attention", (0, 1, 2))


def spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head attention ``softmax(q k^T / sqrt(D)) v`` over ``[N, L, D]`` tensors, any head dim D."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"spatial_attention: q, k, v must be equal [N, L, D] shapes, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return _spatial_attention(q, k, v)
