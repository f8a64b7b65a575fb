import os

# Triton reads this when a kernel is defined, so it must be set before anything imports triton:
# on this CPU-only CI the Triton backend runs under the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def nan_allocations(monkeypatch):
    """Floating-point tensors from torch.empty / Tensor.new_empty start as NaN, so an output element
    a kernel never writes fails the comparison instead of passing on leftover memory."""
    empty, new_empty = torch.empty, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: poison(new_empty(self, *a, **k)))
