"""``causal_conv3d``: the causal 3-D convolution over a cached history, with bias and residual fused."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..backends import select
from ..backends import torch as torch_backend
from ..shapes import check_like_x, conv_output_shape, empty_output, output_format
from . import _autograd


def _check(x, weight, bias, cache, stride, padding, residual):
    if x.dim() != 5:
        raise ValueError(f"causal_conv3d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"causal_conv3d: weight must be [Cout, {x.shape[1]}, kt, kh, kw], got {tuple(weight.shape)}")
    if len(stride) != 3 or len(padding) != 3:
        raise ValueError(f"causal_conv3d: stride and padding take 3 values (t, h, w), got {stride}, {padding}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"causal_conv3d: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if cache is not None:
        if cache.dim() != 5 or cache.shape[:2] != x.shape[:2] or cache.shape[3:] != x.shape[3:] or cache.shape[2] > 2:
            raise ValueError(f"causal_conv3d: cache must be [N, C, <=2, H, W] matching x {tuple(x.shape)}, "
                             f"got {tuple(cache.shape)}")
    shape = conv_output_shape(x.shape, weight.shape, 0 if cache is None else cache.shape[2], stride, padding)
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"causal_conv3d: residual must have the output's shape {shape}, got {tuple(residual.shape)}")
    check_like_x("causal_conv3d", x, weight=weight, bias=bias, cache=cache, residual=residual)
    return shape


def _run(x, weight, bias, cache, stride, padding, residual, out):
    args = (x, weight, bias, cache, tuple(stride), tuple(padding), residual, out)
    return select("causal_conv3d", *args).causal_conv3d(*args)


@torch.library.custom_op("vaekernels::causal_conv3d", mutates_args=())
def _causal_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor], cache: Optional[Tensor],
                   stride: Sequence[int], padding: Sequence[int], residual: Optional[Tensor]) -> Tensor:
    return _run(x, weight, bias, cache, stride, padding, residual, None)


@_causal_conv3d.register_fake
def _(x, weight, bias, cache, stride, padding, residual):
    return empty_output(x, conv_output_shape(x.shape, weight.shape, 0 if cache is None else cache.shape[2],
                                             stride, padding))


@torch.library.custom_op("vaekernels::causal_conv3d_weight_grad", mutates_args=())
def _causal_conv3d_weight_grad(grad: Tensor, x: Tensor, weight: Tensor, cache: Optional[Tensor],
                               stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """The weight's gradient for the output's ``grad``: one kernel per backend (C++ Winograd on CPU)."""
    args = (grad, x, weight, cache, tuple(stride), tuple(padding))
    return select("causal_conv3d_weight_grad", *args).causal_conv3d_weight_grad(*args)


@_causal_conv3d_weight_grad.register_fake
def _(grad, x, weight, cache, stride, padding):
    return weight.new_empty(weight.shape)


@torch.library.custom_op("vaekernels::causal_conv3d_data_grad", mutates_args=())
def _causal_conv3d_data_grad(grad: Tensor, weight: Tensor, front: int, padding: Sequence[int]) -> Tensor:
    """The data gradient of a stride-1 causal conv as a conv (see ``_backward``): the output's gradient ``grad``, with
    ``front`` zero frames before it and kt - 1 after, convolved with the weight's channels swapped and its taps
    reversed; ``padding`` (ph, pw) in space. ``front`` + T frames."""
    args = (grad, weight, int(front), tuple(padding))
    return select("causal_conv3d_data_grad", *args).causal_conv3d_data_grad(*args)


@_causal_conv3d_data_grad.register_fake
def _(grad, weight, front, padding):
    ph, pw = padding
    n, _, t, h, w = grad.shape
    return empty_output(grad, (n, weight.shape[1], front + t, h + 2 * ph - weight.shape[3] + 1,
                               w + 2 * pw - weight.shape[4] + 1))


def _backward(grad, needs, x, weight, bias, cache, stride, padding, residual):
    """Gradients of x, weight, bias, cache and residual (where ``needs`` says). The data gradient (x's and the
    cache's) of a stride-1 conv that keeps the frame size (every causal conv of the models but the downsamplers') is a
    conv itself: of the output's gradient with kt - 1 zero frames after it and, in front, as many as the forward read
    of the cache (the forward's leading zero frames need no gradient), with the weight's channels swapped and its taps
    reversed in time and space (an op of its own, on the fastest backend for it: on CPU the C++ Winograd
    kernels, 1.45-1.76x ATen's data gradient on the models' 3x3x3 convs, float32, AMD Zen 3: benchmarks/RESULTS.md,
    with the forward's transformed weight permuted instead of a flipped copy transformed). The
    weight's gradient is an op of its own (C++ Winograd on CPU); the strided convs' gradients are the torch
    backend's (ATen's convolution backward)."""
    (kt, kh, kw), (pt, ph, pw) = weight.shape[2:], padding
    if tuple(stride) != (1, 1, 1) or grad.shape[2] == 0:
        return torch_backend.causal_conv3d_backward(grad, needs, x, weight, bias, cache, stride, padding, residual)
    if grad.stride(1) != 1 and output_format(x) == torch.channels_last_3d:
        # a gradient from ATen (a strided or time conv's) in NCTHW: one copy, where the C++ gradient kernels, which
        # read dense channels, would fall back to flipped and padded copies and oneDNN
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
    as_conv = (needs[0] or needs[3]) and kt == 2 * pt + 1 and kh == 2 * ph + 1 and kw == 2 * pw + 1
    data = (needs[0] and not as_conv, False, False, needs[3] and not as_conv, False, False, False)
    grads = list(torch_backend.causal_conv3d_backward(grad, data, x, weight, bias, cache, stride, padding, residual))
    if needs[1]:
        grads[1] = _causal_conv3d_weight_grad(grad, x, weight, cache, stride, padding)
    if needs[2] and bias is not None:
        grads[2] = torch_backend.bias_grad(grad, bias)
    if needs[6] and residual is not None:
        grads[6] = grad
    if as_conv:
        c = 0 if cache is None else cache.shape[2]
        # the gradient of the sequence the forward read, but for its leading zero frames: those of the cache and x
        g_seq = _causal_conv3d_data_grad(grad.to(x.dtype), weight, kt - 1 - max(0, 2 * pt - c), (ph, pw))
        grads[0] = g_seq[:, :, c:] if needs[0] else None
        grads[3] = g_seq[:, :, :c] if needs[3] else None
    return tuple(grads)


# grads of x, weight, bias, cache, residual (above); the _out variant is inference-only
_autograd.register(_causal_conv3d, "causal_conv3d", (0, 1, 2, 3, 6), extra=(None,), backward=_backward)


@torch.library.custom_op("vaekernels::causal_conv3d_out", mutates_args=("out",))
def _causal_conv3d_out(x: Tensor, weight: Tensor, bias: Optional[Tensor], cache: Optional[Tensor],
                       stride: Sequence[int], padding: Sequence[int], residual: Optional[Tensor], out: Tensor) -> None:
    _run(x, weight, bias, cache, stride, padding, residual, out)


@_causal_conv3d_out.register_fake
def _(x, weight, bias, cache, stride, padding, residual, out):
    return None


def causal_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, cache: Optional[Tensor] = None,
                  stride=(1, 1, 1), padding=(0, 0, 0), residual: Optional[Tensor] = None,
                  out: Optional[Tensor] = None) -> Tensor:
    """Causal 3-D convolution: ``[N,Cin,T,H,W] -> [N,Cout,T',H',W']``.

    ``padding=(pt, ph, pw)`` has the CausalConv3d meaning: ``2*pt`` zero frames in front of the
    clip (fewer by the number of ``cache`` frames, ``cache`` being the last <=2 input frames of the
    previous chunk, ``[N,Cin,<=2,H,W]``), none after; ``ph``/``pw`` zeros on both sides in space.
    ``residual`` (the output's shape) is added to the result. With ``out`` (any strided tensor of
    the output's shape) the result is written there and ``out`` is returned (when autograd records the call,
    as a copy of the functional result: the in-place variant has no backward).
    """
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    shape = _check(x, weight, bias, cache, stride, padding, residual)
    if out is None:
        return _causal_conv3d(x, weight, bias, cache, stride, padding, residual)
    if tuple(out.shape) != shape:
        raise ValueError(f"causal_conv3d: out must have shape {shape}, got {tuple(out.shape)}")
    check_like_x("causal_conv3d", x, out=out)
    if _autograd.records(x, weight, bias, cache, residual):
        return out.copy_(_causal_conv3d(x, weight, bias, cache, stride, padding, residual))
    _causal_conv3d_out(x, weight, bias, cache, stride, padding, residual, out)
    return out
