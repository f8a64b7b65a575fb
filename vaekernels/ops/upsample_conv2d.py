"""``upsample_conv2d``: nearest 2x upsampling then a 3x3 conv per frame, without writing the upsampled tensor."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import select
from ..backends import torch as torch_backend
from ..shapes import check_like_x, empty_output, output_format, upsample_output_shape
from . import _autograd
from .causal_conv3d import _causal_conv3d_data_grad, _causal_conv3d_weight_grad


@torch.library.custom_op("vaekernels::upsample_conv2d", mutates_args=())
def _upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    return select("upsample_conv2d", x, weight, bias, residual).upsample_conv2d(x, weight, bias, residual)


@_upsample_conv2d.register_fake
def _(x, weight, bias, residual):
    return empty_output(x, upsample_output_shape(x.shape, weight.shape))


def _backward(grad, needs, x, weight, bias, residual):
    """Gradients of x, weight, bias and residual (where ``needs`` says) through the conv of the upsampled frames as a
    one-tap causal_conv3d, on its gradient ops' fastest backends (on CPU the C++ Winograd kernels) rather than by a
    recompute under autograd: x's is the conv's data gradient summed over each 2x2 block (nearest upsampling's
    backward), the weight's is taken on an upsampled copy of x."""
    w5 = weight.unsqueeze(2)
    grad = grad.to(x.dtype)
    gx = gw = gb = gr = None
    if needs[0]:
        g = _causal_conv3d_data_grad(grad, w5, 0, (1, 1)).to(torch.promote_types(x.dtype, torch.float32))
        # the four strided quarters added: ATen's sum over the two pair dims of a channels-last tensor ran 37x slower
        # (41 against 1.1 ms for 25 MB of float32, 2 Sapphire Rapids cores)
        gx = ((g[..., 0::2, 0::2] + g[..., 0::2, 1::2]) + (g[..., 1::2, 0::2] + g[..., 1::2, 1::2])).to(x.dtype)
        gx = gx.contiguous(memory_format=output_format(x))
    if needs[1]:
        up = torch.nn.functional.interpolate(x, scale_factor=(1, 2, 2), mode="nearest").contiguous(
            memory_format=output_format(x))
        gw = _causal_conv3d_weight_grad(grad, up, w5, None, (1, 1, 1), (0, 1, 1)).squeeze(2)
    if needs[2] and bias is not None:
        gb = torch_backend.bias_grad(grad, bias)
    if needs[3] and residual is not None:
        gr = grad
    return gx, gw, gb, gr


# grads of x, weight, bias, residual (above)
_autograd.register(_upsample_conv2d, "upsample_conv2d", (0, 1, 2, 3), backward=_backward)


def upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
                    residual: Optional[Tensor] = None) -> Tensor:
    """Nearest 2x upsampling in H and W, then a 3x3 conv (padding 1), frame by frame; ``residual``
    (the output's shape) is added to the result.

    ``x`` ``[N,Cin,T,H,W]``, ``weight`` ``[Cout,Cin,3,3]`` -> ``[N,Cout,T,2H,2W]``.
    """
    if x.dim() != 5:
        raise ValueError(f"upsample_conv2d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"upsample_conv2d: weight must be [Cout, {x.shape[1]}, 3, 3], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"upsample_conv2d: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    shape = upsample_output_shape(x.shape, weight.shape)
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"upsample_conv2d: residual must have the output's shape {shape}, got "
                         f"{tuple(residual.shape)}")
    check_like_x("upsample_conv2d", x, weight=weight, bias=bias, residual=residual)
    return _upsample_conv2d(x, weight, bias, residual)
