"""What the tests share: the one tolerance rule, the backends to parametrise over, and tensor makers.

The tolerance rule (house style): a result's error against a float64 oracle (python_ref.ops, or a float64 run
of python_ref) may be at most ``factor`` times the error of plain PyTorch in the same dtype, plus a floor:
``rel_floor`` times the oracle's largest magnitude and ``ulps`` rounding steps of the dtype at each element's
own magnitude. The floors stand for roundings the fast path does and plain PyTorch does not (or does
elsewhere); ``TOLERANCE`` gives them per backend and dtype, with the reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaekernels import Wan22VAEModel, WanVAEModel, use_backend
from vaekernels.backends import reason

CL = torch.channels_last_3d
DATA = Path(__file__).parent / "data"
# tiny models of both families (Wan2.2's as its golden file), with a frame size (H, W) each takes
TINY = {"wan2.1": (WanVAEModel, dict(dim=8, z_dim=4, temperal_downsample=[False, True, True]), (24, 40)),
        "wan2.2": (Wan22VAEModel, torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True)["config"], (32, 48))}
BACKENDS = ["torch", "cpp", "triton"]
DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

# (backend, dtype) -> (factor, rel_floor, ulps)
TOLERANCE = {
    # plain PyTorch is this backend: its own error is the bound, so an absolute one from the dtype: float32 sums
    # of a few hundred products stay well under 1e-5 of the largest value; in bf16/fp16 it rounds at most five
    # times per output (after each time tap of a 1x1 conv, the bias, the residual): five half-steps of the dtype
    # at the largest value (measured on the conv cases: at most 0.81 steps in bf16, 0.86 in fp16)
    ("torch", torch.float32): (0.0, 1e-5, 0.0),
    ("torch", torch.bfloat16): (0.0, 2.5 * 2.0 ** -7, 0.0),
    ("torch", torch.float16): (0.0, 2.5 * 2.0 ** -10, 0.0),
    # the C++ ops round at other places than plain PyTorch (fused bias/residual, Winograd transforms, summed
    # phase weights), and more often only in bf16 convs of 512+ input channels on AMX (up to three partial sums
    # rounded, each one rounding as plain PyTorch's whole conv: measured 1.9-2.0x its error): twice its error, and a
    # floor well under one rounding step (fp32 2^-24, bf16 2^-9 = 2e-3) for when plain PyTorch happens to be exact
    ("cpp", torch.float32): (2.0, 1e-6, 0.0),
    ("cpp", torch.bfloat16): (2.0, 1e-3, 0.0),
    # Triton's interpreter: float32 kernels twice plain PyTorch's error plus one fp32 step at the largest value;
    # bf16/fp16 kernels compute in float32 and round once, but the interpreter's fp32->bf16 store truncates
    # instead of rounding: plain PyTorch's error plus one step at each element
    ("triton", torch.float32): (2.0, 2.0 ** -23, 0.0),
    ("triton", torch.bfloat16): (1.0, 0.0, 1.0),
    ("triton", torch.float16): (1.0, 0.0, 1.0),
}


def spacing(v: torch.Tensor, dtype) -> torch.Tensor:
    """The distance between adjacent ``dtype`` numbers at |v| (float64)."""
    info = torch.finfo(dtype)
    mantissa = round(-torch.log2(torch.tensor(info.eps)).item())  # bits after the point: fp32 23, bf16 7, fp16 10
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(info.tiny))) - mantissa)


def assert_close_to_oracle(actual, oracle, reference=None, *, factor=2.0, rel_floor=0.0, ulps=0.0):
    """``actual``'s error against the float64 ``oracle`` is at most ``factor`` times ``reference``'s (plain PyTorch
    in ``actual``'s dtype) plus ``rel_floor * max|oracle|`` plus ``ulps`` steps of the dtype at each element."""
    assert actual.shape == oracle.shape, (tuple(actual.shape), tuple(oracle.shape))
    assert not torch.isnan(actual).any(), "NaN in the result: an element was never written"
    err = (actual.double() - oracle).abs()
    ref_err = 0.0 if reference is None else (reference.double() - oracle).abs().max().item()
    bound = factor * ref_err + rel_floor * oracle.abs().max().item()
    if ulps:
        bound = bound + ulps * spacing(oracle, actual.dtype)
    worst = (err - bound).argmax() if torch.is_tensor(bound) else err.argmax()
    assert bool((err <= bound).all()), (
        f"error {err.flatten()[worst].item():.3g} at element {worst.item()} exceeds its bound "
        f"({factor} x plain PyTorch's {ref_err:.3g} + floors {rel_floor:g} x max, {ulps:g} ulp)")


def assert_backend_close(backend, actual, oracle, reference):
    """The tolerance rule with ``TOLERANCE[backend, dtype]``."""
    factor, rel_floor, ulps = TOLERANCE[backend, actual.dtype]
    assert_close_to_oracle(actual, oracle, None if backend == "torch" else reference, factor=factor,
                           rel_floor=rel_floor, ulps=ulps)


def rel_err(a, b):
    """max|a - b| / max|b| (b the float64 truth)."""
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def skip_unless_supported(backend, op, *args):
    """Skip the test, with the backend's own reason, where ``backend`` cannot run ``op`` on ``args``."""
    why = reason(backend, op, *args)
    if why:
        pytest.skip(f"{backend}: {why}")


def randn(*shape, dtype=torch.float32, scale=1.0, channels_last=True, seed=None):
    """Normal values (drawn in float64, then rounded to ``dtype``), channels-last for 5-D shapes."""
    if seed is not None:
        torch.manual_seed(seed)
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    return t.contiguous(memory_format=CL) if channels_last and t.dim() == 5 else t


def poisoned(*shape, dtype=torch.float32, channels_last=True):
    """A NaN-filled tensor: an element a kernel never writes fails the comparison."""
    t = torch.full(shape, float("nan"), dtype=dtype)
    return t.contiguous(memory_format=CL) if channels_last and t.dim() == 5 else t


def read_keys_tsv(path):
    """``{key: shape}`` and the total number of values of a checkpoint key list (``shared/*_keys.tsv``)."""
    shapes, total = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("# total parameters"):
            total = int(line.split()[-1])
        elif line.startswith("#") and "values" in line:
            total = int(line.rsplit(",", 1)[-1].split()[0])
        elif line and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(int(s) for s in shape.split("x"))
    return shapes, total


def spy_on_joins(monkeypatch):
    """A list that records every ``torch.cat`` (the shapes joined) and every ``F.pad`` of a 5-D tensor (an
    activation; weights are 4-D) from now on."""
    import torch.nn.functional as F

    calls = []
    real_cat, real_pad = torch.cat, F.pad

    def spy_cat(tensors, *a, **k):
        calls.append(("cat", [tuple(t.shape) for t in tensors]))
        return real_cat(tensors, *a, **k)

    def spy_pad(t, pad, *a, **k):
        if t.dim() == 5:
            calls.append(("pad", tuple(t.shape)))
        return real_pad(t, pad, *a, **k)

    monkeypatch.setattr(torch, "cat", spy_cat)
    monkeypatch.setattr(F, "pad", spy_pad)
    return calls


def tiny_model(family, seed=0):
    """``TINY[family]``'s model with random weights (seeded), in eval mode, not requiring grad."""
    cls, config, _ = TINY[family]
    torch.manual_seed(seed)
    return cls(**config).eval().requires_grad_(False)


def check_gradients(backend, op, oracle, args, grad_args, seed=0, finite_differences=True):
    """The op's backward on ``backend``: gradcheck in float64 (finite differences along random directions, its fast
    mode; run once, with the torch backend's case, the only backend that runs float64), then float32 gradients of a weighted sum of its output against the float64 oracle's
    autograd gradients at the same inputs, for the tensor arguments at positions ``grad_args`` of ``args`` (float64
    tensors; the others are passed as they are). ``finite_differences=False`` skips gradcheck, for an op whose plain
    version rounds a float64 input to float32 on purpose (the caller says why)."""
    gen = torch.Generator().manual_seed(seed)

    def call(fn, values):
        full = list(args)
        for i, v in zip(grad_args, values):
            full[i] = v
        return fn(*full)

    leaves = [args[i].detach().clone().requires_grad_(True) for i in grad_args]
    if backend == "torch" and finite_differences:
        with use_backend("torch"):
            assert torch.autograd.gradcheck(lambda *v: call(op, v), leaves, fast_mode=True)
    out = call(oracle, leaves)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    want = torch.autograd.grad((out * weights).sum(), leaves)
    leaves32 = [t.detach().float().requires_grad_(True) for t in leaves]
    with use_backend(backend):
        got = torch.autograd.grad((call(op, leaves32).double() * weights).sum(), leaves32)
    for i, g, w in zip(grad_args, got, want):
        # float32 forward and backward convs and sums of a few hundred terms: within 1e-5 of the largest gradient
        assert g.dtype == torch.float32 and g.shape == w.shape, i
        assert (g.double() - w).abs().max() <= 1e-5 * w.abs().max(), f"argument {i}"


def requiring_grad(args):
    """``args`` with every floating tensor a leaf that requires grad (opcheck then checks the autograd
    registration too)."""
    return tuple(a.detach().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
