"""``spatial_attention``: single-head attention over the positions of each frame."""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import select


@torch.library.custom_op("vaekernels::spatial_attention", mutates_args=())
def _spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return select("spatial_attention", q, k, v).spatial_attention(q, k, v)


@_spatial_attention.register_fake
def _(q, k, v):
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    """Recomputes the attention with PyTorch's SDPA and takes its gradients: no fused backward kernel yet (the
    forward keeps no softmax statistics to reuse), so the backward costs a forward more, and on CPU and for head
    dims the flash kernels do not take, SDPA's math path holds the L x L scores of a frame."""
    q, k, v = (t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad))
    with torch.enable_grad():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    wanted = [t for t in (q, k, v) if t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, grad))
    return tuple(next(grads) if t.requires_grad else None for t in (q, k, v))


_spatial_attention.register_autograd(_backward, setup_context=_setup_context)


def spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head attention ``softmax(q k^T / sqrt(D)) v`` over ``[N, L, D]`` tensors, any head dim D."""
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"spatial_attention: q, k, v must be equal [N, L, D] shapes, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return _spatial_attention(q, k, v)
