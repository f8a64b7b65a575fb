"""The Triton backend: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run it).

Kernels, one module per op: ``rms_norm_silu``, ``spatial_attention``, ``causal_conv3d``,
``upsample_conv2d``. Each module also lists in ``AOT_CASES`` the kernel configurations its host
code can choose, which ``vaekernels.kernel_report`` compiles for sm_80 and sm_90.
"""
from __future__ import annotations

import functools
import os

import torch

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # triton itself reads it once, at kernel definition

try:
    import triton  # noqa: F401
except ImportError as e:
    _IMPORT_ERROR = f"triton is not importable ({e})"
else:
    _IMPORT_ERROR = None
    from .causal_conv3d import causal_conv3d
    from .rms_norm_silu import rms_norm_silu
    from .spatial_attention import spatial_attention
    from .upsample_conv2d import upsample_conv2d


@functools.cache
def available():
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if not _INTERPRETING and not torch.cuda.is_available():
        return "no CUDA device (and TRITON_INTERPRET=1 is not set)"
    return None


def unsupported(x):
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} (the Triton kernels take float32, bfloat16 and float16)"
    if x.device.type == "cuda" or (x.device.type == "cpu" and _INTERPRETING):
        return None
    return f"{x.device.type} tensors (Triton runs CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1)"

