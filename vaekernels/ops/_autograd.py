"""The ops' gradients, for the ops that have no backward kernel of their own yet, and the rule for ``out=`` under
autograd.

The op's gradients are those of the plain PyTorch backend's version of it (``backends.torch``): the op's own backward
where its module gives one (causal_conv3d: its data gradient as a causal conv, ops/causal_conv3d.py; upsample_conv2d:
the same ops' gradients of a one-tap conv of the upsampled frames, ops/upsample_conv2d.py), else the plain
backend's (``causal_conv3d_backward``: ATen's convolution backward on the saved inputs, the cache and chunk read as
one view where they are adjacent), else that version run again under autograd on the saved inputs: exact to the
dtype (the same function, in PyTorch's kernels), at the cost of a forward more and of its intermediates.
The ``_out`` variants of the ops stay inference-only: when autograd records a call, an op given ``out=`` runs its
functional variant and copies the result into ``out`` (``records``), a copy autograd can follow.
"""
from __future__ import annotations

import torch

from ..backends import torch as torch_backend


def register(op, name: str, tensor_args: tuple[int, ...], extra: tuple = (), backward=None):
    """Give custom op ``op`` (the plain backend's function ``name``, taking the op's arguments then ``extra``) a
    backward for its tensor arguments at positions ``tensor_args`` (optional ones may be None): ``backward`` or the
    plain backend's ``<name>_backward`` where it has one (``(grad, needs_input_grad, *op arguments)`` -> the
    gradients), else by recomputation."""
    direct = backward or getattr(torch_backend, f"{name}_backward", None)

    def setup_context(ctx, inputs, output):
        present = tuple(i for i in tensor_args if inputs[i] is not None)
        ctx.save_for_backward(*(inputs[i] for i in present))
        ctx.present = present
        ctx.others = tuple(None if i in tensor_args else a for i, a in enumerate(inputs))

    def backward(ctx, grad):
        args = list(ctx.others)
        for i, t in zip(ctx.present, ctx.saved_tensors):
            args[i] = t
        if direct is not None:
            return direct(grad, ctx.needs_input_grad, *args)
        wanted = [i for i in ctx.present if ctx.needs_input_grad[i]]
        for i in ctx.present:
            args[i] = args[i].detach().requires_grad_(i in wanted)
        with torch.enable_grad():
            out = getattr(torch_backend, name)(*args, *extra)
        grads = dict(zip(wanted, torch.autograd.grad(out, [args[i] for i in wanted], grad, allow_unused=True)))
        return tuple(grads.get(i) for i in range(len(args)))

    op.register_autograd(backward, setup_context=setup_context)


def records(*tensors) -> bool:
    """Whether autograd records a call on ``tensors`` (some may be None)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
