"""The ops' shape rules and output allocation, in one place: used by the ops' checks and fake implementations
and by every backend (so that all of them allocate what the fake says). Imports nothing of the package.

All activations are ``[N, C, T, H, W]``; an op's output follows the memory format of its input ``x``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_like_x(op: str, x: Tensor, **tensors) -> None:
    """Raise naming the first of ``tensors`` (name -> tensor or None) whose dtype or device is not ``x``'s: the
    kernels read every operand as x's dtype, on x's device."""
    for name, t in tensors.items():
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{op}: {name} must be {x.dtype} on {x.device}, as x is; got {t.dtype} on {t.device}")


def conv_output_shape(x_shape, weight_shape, cache_frames, stride, padding):
    """Output shape of ``causal_conv3d``.

    In time the conv sees ``max(0, 2*pt - cache_frames)`` zero frames, the cache, then ``x``,
    and pads nothing after; in space it pads ``ph``/``pw`` on both sides.
    """
    n, _, t, h, w = x_shape
    cout, _, kt, kh, kw = weight_shape
    st, sh, sw = stride
    pt, ph, pw = padding
    t_in = max(0, 2 * pt - cache_frames) + cache_frames + t
    t_out = max(0, (t_in - kt) // st + 1) if t_in >= kt else 0
    return (n, cout, t_out, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


def upsample_output_shape(x_shape, weight_shape):
    """Output shape of ``upsample_conv2d``: 2x in H and W, the weight's output channels."""
    n, _, t, h, w = x_shape
    return (n, weight_shape[0], t, 2 * h, 2 * w)


def avg_down3d_output_shape(x_shape, cache_frames, zeros, factor_t, factor_s, out_channels):
    """Output shape of ``avg_down3d``: one frame per whole group of ``factor_t`` frames of the sequence
    (zeros, cache, x), H and W divided by ``factor_s``."""
    n, _, t, h, w = x_shape
    return (n, out_channels, (zeros + cache_frames + t) // factor_t, h // factor_s, w // factor_s)


def dup_up3d_output_shape(x_shape, factor_t, factor_s, out_channels, drop):
    """Output shape of ``dup_up3d``: ``factor_t`` frames per input frame less the ``drop`` first ones, H and W
    times ``factor_s``."""
    n, _, t, h, w = x_shape
    return (n, out_channels, t * factor_t - drop, h * factor_s, w * factor_s)


def output_format(x: Tensor):
    """The memory format of an op's output: channels-last-3d when ``x`` has dense channels and is not plainly
    contiguous (a frame window of a channels-last buffer counts: the engine's conv inputs are such views), else
    contiguous."""
    if x.dim() != 5 or x.is_contiguous():
        return torch.contiguous_format
    dense = x.is_contiguous(memory_format=torch.channels_last_3d) or (x.shape[1] > 1 and x.stride(1) == 1)
    return torch.channels_last_3d if dense else torch.contiguous_format


def empty_output(x: Tensor, shape) -> Tensor:
    """An uninitialised output of ``shape`` in ``x``'s dtype and memory format (what every backend returns)."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
