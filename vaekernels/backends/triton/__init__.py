"""The Triton backend: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run it).

Kernels, one module per op: ``rms_norm_silu``, ``spatial_attention``, ``causal_conv3d``,
``upsample_conv2d``, ``avg_down3d``, ``dup_up3d``. Each module also lists in ``AOT_CASES`` the kernel
configurations its host code can choose, which ``vaekernels.kernel_report`` compiles for sm_80 and sm_90,
and may define ``supports(*args)`` for what its kernel cannot take (the dispatcher then uses another backend)
and ``defer(*args)`` for calls it can take but another backend runs faster (``auto`` then takes that one).
"""
from __future__ import annotations

import functools
import sys

import torch

from ... import envs

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INTERPRETING = envs.TRITON_INTERPRET

try:
    import triton  # noqa: F401
except ImportError as e:
    _IMPORT_ERROR = f"triton is not importable ({e})"
else:
    _IMPORT_ERROR = None
    from ._launch import is_recording
    from .avg_down3d import avg_down3d
    from .causal_conv3d import causal_conv3d, causal_conv3d_data_grad, causal_conv3d_weight_grad
    from .dup_up3d import dup_up3d
    from .rms_norm_silu import rms_norm_silu, rms_norm_silu_backward
    from .spatial_attention import spatial_attention
    from .upsample_conv2d import upsample_conv2d


@functools.cache
def _unavailable():
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if not _INTERPRETING and not torch.cuda.is_available():
        return "no CUDA device (and TRITON_INTERPRET=1 is not set)"
    return None


def supports(op, x, *args):
    recording = not _IMPORT_ERROR and is_recording()  # launches are only noted: any device will do (see _launch)
    if _unavailable() and not recording:
        return _unavailable()
    problems = []
    if x.dtype not in _DTYPES:
        problems.append(f"dtype {x.dtype} (the Triton kernels take float32, bfloat16 and float16)")
    if not (x.device.type == "cuda" or (x.device.type == "cpu" and (_INTERPRETING or recording))):
        problems.append(f"{x.device.type} tensors (Triton runs CUDA tensors, and CPU tensors only under "
                        f"TRITON_INTERPRET=1)")
    # the op's own module (imported above when it exists) may state its kernel's limits
    kernel_limits = getattr(sys.modules.get(f"{__name__}.{op}"), "supports", None)
    if kernel_limits and args:
        problems.append(kernel_limits(x, *args))
    return "; ".join(p for p in problems if p) or None


def defer(op, x, *args):
    """Why ``auto`` should give this call to the next backend though a kernel here can run it, or None."""
    kernel_defers = getattr(sys.modules.get(f"{__name__}.{op}"), "defer", None)
    return kernel_defers(x, *args) if kernel_defers else None
