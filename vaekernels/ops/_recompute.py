"""A backward by recomputation, for the ops that have no backward kernel yet.

The op's gradients are those of the plain PyTorch backend's version of it (``backends.torch``), run again under
autograd on the saved inputs: exact to the dtype (it is the same function, in PyTorch's kernels), at the cost of a
forward more and of that version's intermediates (a conv's input sequence with its cache and zero frames joined).
The ``_out`` variants of the ops stay inference-only.
"""
from __future__ import annotations

import torch

from ..backends import torch as torch_backend


def register(op, name: str, tensor_args: tuple[int, ...], extra: tuple = ()):
    """Give custom op ``op`` (the plain backend's function ``name``, taking the op's arguments then ``extra``) a
    backward for its tensor arguments at positions ``tensor_args`` (optional ones may be None)."""

    def setup_context(ctx, inputs, output):
        present = tuple(i for i in tensor_args if inputs[i] is not None)
        ctx.save_for_backward(*(inputs[i] for i in present))
        ctx.present = present
        ctx.others = tuple(None if i in tensor_args else a for i, a in enumerate(inputs))

    def backward(ctx, grad):
        args = list(ctx.others)
        for i, t in zip(ctx.present, ctx.saved_tensors):
            args[i] = t.detach().requires_grad_(bool(ctx.needs_input_grad[i]))
        wanted = [i for i in ctx.present if ctx.needs_input_grad[i]]
        with torch.enable_grad():
            out = getattr(torch_backend, name)(*args, *extra)
        grads = dict(zip(wanted, torch.autograd.grad(out, [args[i] for i in wanted], grad, allow_unused=True)))
        return tuple(grads.get(i) for i in range(len(args)))

    op.register_autograd(backward, setup_context=setup_context)
