"""The fused Triton upsample_conv2d kernel, run by the Triton interpreter on CPU.

Oracle: explicit nearest 2x upsampling (repeat_interleave) and F.conv2d, in float64. Tolerances and
NaN-poisoned outputs as in test_triton_causal_conv3d, whose helpers this reuses.
"""
import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the kernels must be defined for the interpreter

import pytest
import torch
import torch.nn.functional as F

from test_triton_causal_conv3d import CL, assert_close, poison_allocations
from vaekernels.backends import torch as torch_backend

# the module, not the package's re-exported function of the same name
triton_up = importlib.import_module("vaekernels.backends.triton.upsample_conv2d")


def oracle(x, weight, bias):
    n, c, t, h, w = x.shape
    frames = x.double().transpose(1, 2).reshape(n * t, c, h, w)
    up = frames.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    y = F.conv2d(up, weight.double(), None if bias is None else bias.double(), padding=1)
    return y.view(n, t, -1, 2 * h, 2 * w).transpose(1, 2)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    poison_allocations(monkeypatch, triton_up)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, cout, bias", [((1, 13, 2, 5, 7), 6, True), ((2, 5, 1, 3, 1), 13, False)])
def test_matches_oracle(dtype, shape, cout, bias):
    torch.manual_seed(cout)
    x = torch.randn(shape).to(dtype).contiguous(memory_format=CL)
    weight = torch.randn(cout, shape[1], 3, 3).to(dtype)
    b = torch.randn(cout).to(dtype) if bias else None
    y = triton_up.upsample_conv2d(x, weight, b)
    assert y.is_contiguous(memory_format=CL)
    assert_close(y, oracle(x, weight, b), torch_backend.upsample_conv2d(x, weight, b))


def test_contiguous_input_on_small_tiles(monkeypatch):
    """An input in the default layout, and tiles small enough that M, N and K each have several blocks."""
    cc = importlib.import_module("vaekernels.backends.triton.causal_conv3d")
    monkeypatch.setattr(cc, "_interpreter_blocks", lambda m, cin, cout: (64, 16, 16))
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 20, 2, 3, 5), torch.randn(18, 20, 3, 3), torch.randn(18)
    y = triton_up.upsample_conv2d(x, weight, bias)
    assert y.is_contiguous()
    assert_close(y, oracle(x, weight, bias), torch_backend.upsample_conv2d(x, weight, bias))
