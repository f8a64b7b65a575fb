"""Nearest 2x upsampling then a 3x3 conv (padding 1), per frame, fused (Triton).

Design: the implicit-GEMM conv kernel of ``causal_conv3d`` with ``UP=2``: its 3x3 taps run over
the virtual upsampled grid (zero padding tested there, 0 <= 2h' + dh - 1 < 2H) and read the
low-resolution input at ``(row // 2, col // 2)``, so the 4x larger upsampled tensor is never
written. This is the direct form (9 taps per output); the phase decomposition into four 2x2
convs would need 4 taps, but on weights summed in advance, which in bf16 adds a rounding the
reference does not have.
"""
from __future__ import annotations

from ...shapes import empty_output, upsample_output_shape
from .causal_conv3d import aot_cases, launch_conv


def supports(x, *args):
    """Why this kernel cannot take ``x``, or None: offsets within a frame are 32-bit in the K loop (a frame of
    over two billion elements is beyond it)."""
    extent = (x.shape[3] - 1) * x.stride(3) + (x.shape[4] - 1) * x.stride(4)
    if extent >= 2 ** 31:
        return f"upsample_conv2d's kernel: a frame of x spans {extent} elements; at most 2^31 - 1"
    return None


def upsample_conv2d(x, weight, bias, residual):
    out = empty_output(x, upsample_output_shape(x.shape, weight.shape))
    return launch_conv(x, None, 0, weight.unsqueeze(2), bias, residual, out, (1, 1, 1), (1, 1), up=2)


AOT_CASES = aot_cases("upsample_conv2d", dict(KT=1, KH=3, KW=3, ST=1, SH=1, SW=1, PH=1, PW=1, UP=2), joined=True)
