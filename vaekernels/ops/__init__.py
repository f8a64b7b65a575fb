"""The public ops: the contract every backend implements, one module per op.

Each op is registered with ``torch.library`` (schema + fake implementation), so it is opaque to
``torch.compile`` and checked by ``torch.library.opcheck``, and picks its backend per call
(``vaekernels.backends.select``). Ops that a producer may write straight into a caller's buffer (the
engine's causal-cache buffers) also have an ``_out`` variant that mutates ``out``; the Python
functions pick the variant. Shape rules live in ``vaekernels.shapes``.

All activations are ``[N, C, T, H, W]``; the model keeps them channels-last-3d, and an op's
output follows the memory format of its input ``x``.
"""
from ..shapes import conv_output_shape
from .avg_down3d import avg_down3d
from .causal_conv3d import causal_conv3d
from .dup_up3d import dup_up3d
from .rms_norm_silu import rms_norm_silu
from .spatial_attention import spatial_attention
from .upsample_conv2d import upsample_conv2d

__all__ = ["causal_conv3d", "rms_norm_silu", "spatial_attention", "upsample_conv2d", "avg_down3d", "dup_up3d",
           "conv_output_shape"]
