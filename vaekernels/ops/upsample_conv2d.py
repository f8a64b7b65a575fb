"""``upsample_conv2d``: nearest 2x upsampling then a 3x3 conv per frame, without writing the upsampled tensor."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import select
from ..shapes import check_like_x, empty_output, upsample_output_shape
from . import _autograd


@torch.library.custom_op("vaekernels::upsample_conv2d", mutates_args=())
def _upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    return select("upsample_conv2d", x, weight, bias, residual).upsample_conv2d(x, weight, bias, residual)


@_upsample_conv2d.register_fake
def _(x, weight, bias, residual):
    return empty_output(x, upsample_output_shape(x.shape, weight.shape))


# grads of x, weight, bias, residual: recomputed (ops/_autograd.py)
_autograd.register(_upsample_conv2d, "upsample_conv2d", (0, 1, 2, 3))


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
