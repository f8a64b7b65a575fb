import contextlib
import os
from pathlib import Path

import pytest
import torch

# Triton reads this when a kernel is defined, so it must be set before anything imports triton (importing torch
# does not): without CUDA (this CI) the Triton backend runs under the interpreter; with CUDA, its real kernels
# run in the tests that use it (below).
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A custom op's first call imports these two (which import triton: after the line above), and they take note of
# torch's functions as they are then: imported under nan_allocations' patched torch.empty, every later torch.compile
# in the process produced NaNs (tests/models/test_compile.py failed when run after tests/ops/test_rms_norm_silu.py).
import torch._dynamo  # noqa: E402,F401
import torch._inductor  # noqa: E402,F401

# the tests whose tensors are made where the Triton kernels run when they take the triton backend (the op
# tests, parametrised by backend) or call the kernels directly
_KERNEL_TESTS = Path(__file__).parent / "ops", Path(__file__).parent / "backends" / "test_triton_internals.py"


@pytest.fixture(autouse=True)
def _triton_kernels_on_cuda(request):
    """Where CUDA exists, a kernel test of the Triton backend makes its tensors on CUDA (torch's default device
    for the test), its oracles included, so that the compiled kernels run (bf16 dots on tensor cores, bf16
    stores) instead of the interpreter; elsewhere nothing changes."""
    path = Path(str(request.node.fspath))
    backend = getattr(getattr(request.node, "callspec", None), "params", {}).get("backend")
    triton_test = path == _KERNEL_TESTS[1] or (path.parent == _KERNEL_TESTS[0] and backend == "triton")
    with torch.device("cuda") if CUDA and triton_test else contextlib.nullcontext():
        yield


@pytest.fixture
def nan_allocations(monkeypatch):
    """Floating-point tensors from torch.empty / Tensor.new_empty start as NaN, so an output element
    a kernel never writes fails the comparison instead of passing on leftover memory."""
    empty, new_empty = torch.empty, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(new_empty(self, *a, **k)))
