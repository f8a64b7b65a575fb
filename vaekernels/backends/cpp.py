"""The C++ CPU backend: the compiled extension ``vaekernels._C`` (sources in ``csrc/``).

This module is the one place that loads the extension. When it is missing or fails to load, the
error is kept and given as ``supports``' reason (the dispatcher then falls back to the torch
backend and says so once); the package works without it.

Dtypes: float32 and bfloat16. float64 is not run here: under ``auto`` it goes to the torch backend
(which computes in float64 anyway); an explicit ``cpp`` request on float64 raises, so a result
labelled ``cpp`` always came from this code.
"""
from __future__ import annotations

import contextlib

import torch

from .. import envs
from ..shapes import avg_down3d_output_shape, conv_output_shape, dup_up3d_output_shape, empty_output, \
    upsample_output_shape
from . import torch as torch_backend
# ATen's fused CPU attention, as the torch backend uses it: attention is a tiny share of the model's FLOPs, and
# ATen's kernel takes any head dim (Wan2.2's 640 and 1024 too)
from .torch import spatial_attention  # noqa: F401

try:
    from .. import _C  # noqa: F401  loading the library registers torch.ops.vaekernels_cpp
except ImportError as e:  # not built, or built against another torch
    _LOAD_ERROR = f"the C++ extension vaekernels._C is not importable ({e}); build it with " \
                  f"`pip install --no-build-isolation .` or `python setup.py build_ext --inplace`"
else:
    _LOAD_ERROR = None
    _C.allow_amx(envs.cpu_amx())

_DTYPES = (torch.float32, torch.bfloat16)


def supports(op, x, *args):
    if _LOAD_ERROR:
        return _LOAD_ERROR
    problems = []
    if x.device.type != "cpu":
        problems.append(f"it runs on CPU tensors, got one on {x.device}")
    if x.dtype not in _DTYPES:
        problems.append(f"it runs float32 and bfloat16, got {x.dtype}")
    return "; ".join(problems) or None


def memory_path(x):
    # bf16 on AMX runs oneDNN's convs, which hold less scratch than the Winograd convs other CPUs and dtypes run
    return "amx" if x.dtype == torch.bfloat16 and _C.bf16_on_amx() else "default"


@contextlib.contextmanager
def memory_pool():
    """Blocks of 1 MiB and more pooled for the span of one encode or decode (csrc/cpu_pool.cpp): each chunk
    reuses the blocks of the chunk before, and the span hands them back to the OS at its end."""
    _C.cpu_pool_enter()
    try:
        yield
    finally:
        _C.cpu_pool_exit()


def causal_conv3d(x, weight, bias, cache, stride, padding, residual, out):
    if out is None:
        return torch.ops.vaekernels_cpp.causal_conv3d(x, weight, bias, cache, list(stride), list(padding), residual)
    torch.ops.vaekernels_cpp.causal_conv3d_out(x, weight, bias, cache, list(stride), list(padding), residual, out)
    return out


def causal_conv3d_weight_grad(grad, x, weight, cache, stride, padding):
    """Winograd F(2x2, 3x3) for the 3x3 convs (csrc/winograd_conv3d.cpp: 1.9-2.9x ATen's weight gradient on the
    models' 96-1024 channel convs, float32, AMD Zen 3), ATen's (the torch backend's) for the other shapes, as the
    forward op hands those to oneDNN."""
    if (tuple(weight.shape[3:]) == (3, 3) and tuple(padding[1:]) == (1, 1) and tuple(stride) == (1, 1, 1)
            and weight.shape[1] >= 8 and _C.brgemm_convs_serve(x.dtype == torch.bfloat16)):
        return torch.ops.vaekernels_cpp.causal_conv3d_weight_grad(grad.to(x.dtype), x, weight, cache, list(stride),
                                                                  list(padding))
    return torch_backend.causal_conv3d_weight_grad(grad, x, weight, cache, stride, padding)


def causal_conv3d_data_grad(grad, weight, front, padding):
    """Winograd F(2x2, 3x3) from the forward's cached transformed weight for the float32 3x3 convs (its points
    permuted and channels transposed instead of a transform per chunk of a flipped copy, csrc/winograd_conv3d.cpp),
    the forward's C++ conv of copies (the flipped weight, the padded gradient) for the others."""
    return torch.ops.vaekernels_cpp.causal_conv3d_data_grad(grad, weight, front, list(padding))


def rms_norm_silu(x, gamma, silu, eps, out):
    if out is None:
        return torch.ops.vaekernels_cpp.rms_norm_silu(x, gamma, silu, eps)
    torch.ops.vaekernels_cpp.rms_norm_silu_out(x, gamma, silu, eps, out)
    return out


def rms_norm_silu_backward(grad, x, gamma, silu, eps):
    return torch.ops.vaekernels_cpp.rms_norm_silu_backward(grad, x, gamma, silu, eps)


def upsample_conv2d(x, weight, bias, residual):
    return torch.ops.vaekernels_cpp.upsample_conv2d(x, weight, bias, residual)


def avg_down3d(x, cache, zeros, factor_t, factor_s, out_channels):
    return torch.ops.vaekernels_cpp.avg_down3d(x, cache, zeros, factor_t, factor_s, out_channels)


def dup_up3d(x, factor_t, factor_s, out_channels, drop):
    return torch.ops.vaekernels_cpp.dup_up3d(x, factor_t, factor_s, out_channels, drop)


def _register_fakes():
    """Shape-only implementations, for torch.compile and ``torch.library.opcheck``."""

    @torch.library.register_fake("vaekernels_cpp::causal_conv3d")
    def _(x, weight, bias, cache, stride, padding, residual):
        frames = 0 if cache is None else cache.shape[2]
        return empty_output(x, conv_output_shape(x.shape, weight.shape, frames, stride, padding))

    @torch.library.register_fake("vaekernels_cpp::rms_norm_silu")
    def _(x, gamma, silu, eps):
        return torch.empty_like(x)

    @torch.library.register_fake("vaekernels_cpp::rms_norm_silu_backward")
    def _(grad, x, gamma, silu, eps):
        return empty_output(x, x.shape), gamma.new_empty(gamma.shape)

    @torch.library.register_fake("vaekernels_cpp::upsample_conv2d")
    def _(x, weight, bias, residual):
        return empty_output(x, upsample_output_shape(x.shape, weight.shape))

    @torch.library.register_fake("vaekernels_cpp::avg_down3d")
    def _(x, cache, zeros, factor_t, factor_s, out_channels):
        frames = 0 if cache is None else cache.shape[2]
        return empty_output(x, avg_down3d_output_shape(x.shape, frames, zeros, factor_t, factor_s, out_channels))

    @torch.library.register_fake("vaekernels_cpp::dup_up3d")
    def _(x, factor_t, factor_s, out_channels, drop):
        return empty_output(x, dup_up3d_output_shape(x.shape, factor_t, factor_s, out_channels, drop))

    for name in ("causal_conv3d_out", "rms_norm_silu_out"):
        torch.library.register_fake(f"vaekernels_cpp::{name}")(lambda *args: None)


if _LOAD_ERROR is None:
    _register_fakes()
