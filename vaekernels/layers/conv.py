"""The causal conv layer, and the fused norm that writes its input in place.

A causal conv needs its history in front of its input. To avoid joining them with a copy,
the conv hands out a buffer (``CausalConv3d.buffer``) whose first frames already hold the
history; the producer of the conv's input (usually ``rms_norm_silu``) writes into the rest.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops._autograd import records
from .state import empty_frames, last_frames


class RMSNorm(nn.Module):
    """Holds ``gamma`` of the spec's RMS_norm; ``(C,1,1,1)`` for video, ``(C,1,1)`` for images."""

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))


class CausalConv3d(nn.Module):
    """A conv with ``2*pt`` frames of history in front (zeros at the start of the clip)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.in_channels, self.out_channels = in_channels, out_channels
        # the default layout, not the activations' channels-last: state_dict() must be savable as it is
        # (safetensors takes dense tensors only) and alias the parameters; the kernels keep their own layouts
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        nn.init.uniform_(self.bias, -in_channels ** -0.5, in_channels ** -0.5)

    @property
    def history(self):
        return 2 * self.padding[0]

    def buffer(self, state, like):
        """Space for this conv's next input, shaped as ``like`` (``[N,Cin,T,H,W]``), with the history
        already in front; the producer writes the input into the returned view."""
        p = self.history
        buf = empty_frames(like, self.in_channels, p + like.shape[2])
        front = buf[:, :, :p]
        kept = state.get(self)
        if kept is None:
            front.zero_()
        else:
            front.copy_(kept)
        # the body view is taken after the front is written: under autograd, a view taken before an in-place
        # write into its base through another view would count as a leaf, which cannot be written in place
        body = buf[:, :, p:]
        state.hand_out(self, front, body)
        return body

    def cache_for(self, state, x):
        """The history frames to put in front of ``x``: the buffer's front when ``x`` is the body
        this conv handed out, else the kept frames as they are (None at the start: the op's zero frames).
        Not copied into a tensor of their own: the op reads a cache apart from x where it lies, and under
        autograd (where the norm's output is x, not the body) that copy was one per conv and chunk."""
        handed = state.take_handed(self)
        if handed is not None and handed[1].data_ptr() == x.data_ptr() and handed[1].shape == x.shape:
            return handed[0]
        return state.get(self)

    def forward(self, x, state, residual=None, out=None):
        """In a frame split into bands, a kernel spanning rows first has ``x``'s border rows written with the
        neighbouring bands' edge rows (``layers.bands``), in place."""
        if state.bands is not None and self.kernel_size[1] > 1:
            state.bands.refresh(x)
        if not self.history:
            return ops.causal_conv3d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                     residual=residual, out=out)
        cache = self.cache_for(state, x)
        y = ops.causal_conv3d(x, self.weight, self.bias, cache=cache, stride=self.stride,
                              padding=self.padding, residual=residual, out=out)
        state.put(self, last_frames(cache, x, self.history))
        return y


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def norm_into_conv(norm, conv, x, state):
    """``conv``'s input buffer filled with ``rms_norm_silu(x)``: the fused norm writes the conv's input in place.
    When autograd records the norm, its own output instead, which the conv reads apart from its history: written into
    the buffer it would be a copy (``out=`` under autograd), and its backward a scatter into the buffer's gradient."""
    if records(x, norm.gamma):  # the op's own rule for out= under autograd
        return ops.rms_norm_silu(x, norm.gamma)
    body = conv.buffer(state, x)
    ops.rms_norm_silu(x, norm.gamma, out=body)
    return body
