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
    """Single-head attention ``softmax(q k^T / sqrt(D)) v``: queries ``q`` ``[N, L, D]``, keys and values ``k``, ``v``
    ``[N, Lk, D]`` (usually the same positions, Lk = L; a band of rows attends to the whole frame's keys when a frame
    is split over devices), any head dim D."""
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or k.shape[::2] != q.shape[::2] or \
            k.shape[1] < min(1, q.shape[1]):
        raise ValueError(f"spatial_attention: q must be [N, L, D] and k, v equal [N, Lk, D] shapes (Lk >= 1 unless L = 0), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return _spatial_attention(q, k, v)
