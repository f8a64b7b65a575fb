"""Op-level CPU benchmarks: the C++ backend against the torch backend, side by side in one run.

    pytest benchmarks/bench_ops_cpu.py --benchmark-columns=median,rounds --benchmark-sort=name

pytest-benchmark times the C++ backend; the torch backend is timed in the same test on the same
tensors (median of as many rounds) and recorded in ``extra_info`` with the ratio and the effective
throughput of both: FLOPs of the model's formulation of the op (for upsample_conv2d, the 3x3 conv on
the upsampled frames) over time, next to the machine's oneDNN channels-last conv ceiling measured in
the same run (conftest.py). Shapes come from the released configurations of each family (conftest.stage_convs) on
a 17x128x128 clip: its full-resolution level and its widest one.
"""
from __future__ import annotations


import importlib

import pytest
import torch

from conftest import pedantic_median, stage_convs
from vaekernels import use_backend
from vaekernels.backends import cpp
from vaekernels.backends import torch as torch_backend

conv_op = importlib.import_module("vaekernels.ops.causal_conv3d")  # the module (ops.causal_conv3d is the function)

if cpp.supports("causal_conv3d", torch.zeros(1)):
    pytest.skip(cpp.supports("causal_conv3d", torch.zeros(1)), allow_module_level=True)

CL = torch.channels_last_3d
ROUNDS = 3
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def _compare(benchmark, timer, ceiling, op, shape, dtype, work, unit, run_cpp, run_torch):
    """``work`` is in ``unit`` ("gflop" for convs, "gbyte" moved for the memory-bound norm)."""
    torch_s = timer(run_torch)
    # inside one span, as the model calls the ops: outside, every call fingerprints its weight again (csrc/
    # causal_conv3d.cpp, derived_weight), one read of it per call
    with cpp.memory_pool():
        cpp_s = pedantic_median(benchmark, run_cpp, rounds=ROUNDS, warmup_rounds=1)
    if cpp_s is None:
        return
    benchmark.extra_info.update(
        op=op, backend="cpp", shape=str(shape), dtype=str(dtype).replace("torch.", ""), **{unit: round(work, 2)},
        cpp_ms=round(cpp_s * 1e3, 2), torch_ms=round(torch_s * 1e3, 2), speedup=round(torch_s / cpp_s, 3),
        **{f"cpp_{unit}_per_s": round(work / cpp_s, 1), f"torch_{unit}_per_s": round(work / torch_s, 1)},
    )
    if unit == "gflop":
        benchmark.extra_info["ceiling_gflop_per_s"] = ceiling(dtype)


def _randn(*shape, dtype, scale=1.0, channels_last=True):
    t = (torch.randn(*shape) * scale).to(dtype)
    return t.contiguous(memory_format=CL) if channels_last else t


# The residual block's second conv: 3x3x3, the 2-frame history in front of x in one buffer (as the
# engine arranges), bias and the block's shortcut added: per family, its full-resolution level (17 frames) and its
# widest (9 frames)
CONV_SHAPES = {f"{family}_c{c}_{t}x{hw}x{hw}": (c, t, hw) for family, levels in stage_convs().items()
               for (c, hw), t in ((max(levels, key=lambda s: s[1]), 17), (max(levels), 9))}


@DTYPES
@pytest.mark.parametrize("case", list(CONV_SHAPES))
def test_causal_conv3d(benchmark, timer, conv_ceiling, case, dtype):
    c, t, hw = CONV_SHAPES[case]
    torch.manual_seed(0)
    buf = _randn(1, c, 2 + t, hw, hw, dtype=dtype)
    cache, x = buf[:, :, :2], buf[:, :, 2:]
    weight = _randn(c, c, 3, 3, 3, dtype=dtype, scale=0.02, channels_last=False)
    bias = _randn(c, dtype=dtype, channels_last=False)
    residual = _randn(1, c, t, hw, hw, dtype=dtype)
    args = (x, weight, bias, cache, (1, 1, 1), (1, 1, 1), residual, None)
    gflop = 2 * c * c * 27 * t * hw * hw / 1e9
    benchmark.group = f"causal_conv3d {case}"
    _compare(benchmark, timer, conv_ceiling, "causal_conv3d", tuple(x.shape), dtype, gflop, "gflop",
             lambda: cpp.causal_conv3d(*args), lambda: torch_backend.causal_conv3d(*args))


def _backward_inputs(c, t, hw):
    """(output gradient, x, weight, 2-frame cache) of the 3x3x3 conv above, float32: x and cache in one buffer."""
    torch.manual_seed(0)
    buf = _randn(1, c, 2 + t, hw, hw, dtype=torch.float32)
    weight = _randn(c, c, 3, 3, 3, dtype=torch.float32, scale=0.02, channels_last=False)
    return _randn(1, c, t, hw, hw, dtype=torch.float32), buf[:, :, 2:], weight, buf[:, :, :2]


# Training: x's gradient of the same conv (the op's backward, which runs it as a conv of the output gradient with zero
# frames around it and the flipped weight, the causal_conv3d_data_grad op, on the C++ kernels) against ATen's
# convolution backward (oneDNN), float32
@pytest.mark.parametrize("case", list(CONV_SHAPES))
def test_causal_conv3d_backward(benchmark, timer, conv_ceiling, case):
    c, t, hw = CONV_SHAPES[case]
    grad, x, weight, cache = _backward_inputs(c, t, hw)
    args = (x, weight, None, cache, (1, 1, 1), (1, 1, 1), None)
    needs = (True, False, False, True, False, False, False)
    benchmark.group = f"causal_conv3d_backward {case}"

    def run_cpp():
        with use_backend("cpp"):
            return conv_op._backward(grad, needs, *args)
    _compare(benchmark, timer, conv_ceiling, "causal_conv3d_backward", tuple(grad.shape), torch.float32,
             2 * c * c * 27 * t * hw * hw / 1e9, "gflop", run_cpp,
             lambda: torch_backend.causal_conv3d_backward(grad, needs, *args))


# Training: the weight's gradient of the same conv (the op: Winograd F(2x2, 3x3) in C++) against the torch
# backend's (ATen's convolution backward on contiguous copies, oneDNN), float32
@pytest.mark.parametrize("case", list(CONV_SHAPES))
def test_causal_conv3d_weight_grad(benchmark, timer, conv_ceiling, case):
    c, t, hw = CONV_SHAPES[case]
    args = (*_backward_inputs(c, t, hw), (1, 1, 1), (1, 1, 1))
    benchmark.group = f"causal_conv3d_weight_grad {case}"
    _compare(benchmark, timer, conv_ceiling, "causal_conv3d_weight_grad", tuple(args[0].shape), torch.float32,
             2 * c * c * 27 * t * hw * hw / 1e9, "gflop", lambda: cpp.causal_conv3d_weight_grad(*args),
             lambda: torch_backend.causal_conv3d_weight_grad(*args))


# The decoder's last norm before a conv: written into the conv's input buffer behind its history.
@DTYPES
def test_rms_norm_silu(benchmark, timer, conv_ceiling, dtype):
    torch.manual_seed(0)
    x = _randn(1, 96, 17, 128, 128, dtype=dtype)
    gamma = _randn(96, dtype=dtype, channels_last=False)
    body = torch.empty(1, 96, 19, 128, 128, dtype=dtype).contiguous(memory_format=CL)[:, :, 2:]
    benchmark.group = "rms_norm_silu"
    gbytes = 2 * x.numel() * x.element_size() / 1e9  # one read and one write per element
    _compare(benchmark, timer, conv_ceiling, "rms_norm_silu", tuple(x.shape), dtype, gbytes, "gbyte",
             lambda: cpp.rms_norm_silu(x, gamma, True, 1e-12, body),
             lambda: torch_backend.rms_norm_silu(x, gamma, True, 1e-12, body))


# Its backward (training): x's and gamma's gradients from the output's, against the torch backend's formula (what
# the op's backward ran before it had a kernel)
@DTYPES
def test_rms_norm_silu_backward(benchmark, timer, conv_ceiling, dtype):
    torch.manual_seed(0)
    x, grad = _randn(1, 96, 17, 128, 128, dtype=dtype), _randn(1, 96, 17, 128, 128, dtype=dtype)
    gamma = _randn(96, dtype=dtype, channels_last=False)
    benchmark.group = "rms_norm_silu_backward"
    gbytes = 3 * x.numel() * x.element_size() / 1e9  # x and grad read, x's gradient written
    _compare(benchmark, timer, conv_ceiling, "rms_norm_silu_backward", tuple(x.shape), dtype, gbytes, "gbyte",
             lambda: cpp.rms_norm_silu_backward(grad, x, gamma, True, 1e-12),
             lambda: torch_backend.rms_norm_silu_backward(grad, x, gamma, True, 1e-12))


# The decoders' last upsamplers on a 17x128x128 clip: Wan2.1's 192 -> 96 channels, 64x64 -> 128x128, 17 frames;
# Wan2.2's 512 -> 512, 32x32 -> 64x64, 17 frames, with its stage's shortcut as the residual
UPSAMPLES = {"wan2.1_192to96_17x64x64": (192, 96, 17, 64, False), "wan2.2_512to512_17x32x32": (512, 512, 17, 32, True)}


@DTYPES
@pytest.mark.parametrize("case", list(UPSAMPLES))
def test_upsample_conv2d(benchmark, timer, conv_ceiling, case, dtype):
    torch.manual_seed(0)
    cin, cout, t, hw, has_residual = UPSAMPLES[case]
    x = _randn(1, cin, t, hw, hw, dtype=dtype)
    weight = _randn(cout, cin, 3, 3, dtype=dtype, scale=0.02, channels_last=False)
    bias = _randn(cout, dtype=dtype, channels_last=False)
    residual = _randn(1, cout, t, 2 * hw, 2 * hw, dtype=dtype) if has_residual else None
    gflop = 2 * cout * cin * 9 * t * (2 * hw) ** 2 / 1e9
    benchmark.group = f"upsample_conv2d {case}"
    _compare(benchmark, timer, conv_ceiling, "upsample_conv2d", tuple(x.shape), dtype, gflop, "gflop",
             lambda: cpp.upsample_conv2d(x, weight, bias, residual),
             lambda: torch_backend.upsample_conv2d(x, weight, bias, residual))


# Wan2.2's shortcuts on a 17x128x128 clip: the encoder's first (160 channels, 2x2 in space, 64x64 -> 32x32) and the
# decoder's stage 2 (1024 channels at 32x32 -> 512 at 64x64)
@DTYPES
def test_avg_down3d(benchmark, timer, conv_ceiling, dtype):
    x = _randn(1, 160, 17, 64, 64, dtype=dtype)
    args = (x, None, 0, 1, 2, 160)
    benchmark.group = "avg_down3d"
    gbytes = 1.25 * x.numel() * x.element_size() / 1e9  # read x, write a quarter of it
    _compare(benchmark, timer, conv_ceiling, "avg_down3d", tuple(x.shape), dtype, gbytes, "gbyte",
             lambda: cpp.avg_down3d(*args), lambda: torch_backend.avg_down3d(*args))


@DTYPES
def test_dup_up3d(benchmark, timer, conv_ceiling, dtype):
    x = _randn(1, 1024, 17, 32, 32, dtype=dtype)
    args = (x, 1, 2, 512, 0)
    benchmark.group = "dup_up3d"
    gbytes = 3 * x.numel() * x.element_size() / 1e9  # read x, write twice its size
    _compare(benchmark, timer, conv_ceiling, "dup_up3d", tuple(x.shape), dtype, gbytes, "gbyte",
             lambda: cpp.dup_up3d(*args), lambda: torch_backend.dup_up3d(*args))
