"""The Triton rms_norm_silu kernel, run by the Triton interpreter on CPU.

Oracle: the norm written out in float64. Tolerance rule (house style): the kernel's max error
against the oracle is at most twice plain PyTorch's (the torch backend in the same dtype), plus
one rounding step of the dtype at the output's magnitude: for bf16 that is the interpreter's
fp32->bf16 conversion, which truncates where a GPU rounds to nearest; for fp32 it is a floor for
a reference that happens to round exactly.
"""
import importlib
import math

import pytest
import torch

from vaekernels import ops, use_backend
from vaekernels.backends import BackendUnavailable
from vaekernels.backends import torch as torch_backend

kernel_module = importlib.import_module("vaekernels.backends.triton.rms_norm_silu")
triton_backend = importlib.import_module("vaekernels.backends.triton")

CL = torch.channels_last_3d
ULP = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -7}


def oracle(x, gamma, silu, eps=1e-12):
    x = x.double()
    norm = x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(eps)
    y = x / norm * math.sqrt(x.shape[1]) * gamma.double().view(1, -1, *[1] * (x.dim() - 2))
    return y * torch.sigmoid(y) if silu else y


def check(y, x, gamma, silu):
    expected = oracle(x, gamma, silu)
    plain = torch_backend.rms_norm_silu(x, gamma, silu, 1e-12, None)
    err = (y.double() - expected).abs().max().item()
    ref_err = (plain.double() - expected).abs().max().item()
    # 2x plain PyTorch's error + one rounding step at the largest magnitude (see module doc)
    tol = 2 * ref_err + ULP[x.dtype] * expected.abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g} (plain PyTorch {ref_err:.3g})"


def act(shape, dtype, fmt=CL):
    return torch.randn(shape).mul(3).to(dtype).contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 5, 1, 7, 9), (2, 13, 3, 5, 6), (1, 384, 2, 5, 7)])
@pytest.mark.parametrize("silu", [True, False])
def test_parity_channels_last(shape, dtype, silu, nan_allocations):
    x, gamma = act(shape, dtype), torch.randn(shape[1]).to(dtype)
    y = triton_backend.rms_norm_silu(x, gamma, silu, 1e-12, None)
    assert y.stride() == x.stride()  # allocated in x's memory format, as the op's fake says
    check(y, x, gamma, silu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_layouts(dtype, nan_allocations):
    gamma = torch.randn(13).to(dtype)
    for x in (act((2, 13, 3, 5, 6), dtype, torch.contiguous_format),  # NCTHW: positions contiguous
              act((1, 13, 5, 7), dtype, torch.contiguous_format),  # an image [N, C, H, W]
              act((2, 13, 4, 9, 12), dtype)[:, :, 1:, 1:-1, ::2]):  # no two row dims merge
        check(triton_backend.rms_norm_silu(x, gamma, True, 1e-12, None), x, gamma, True)


@pytest.mark.parametrize("C, max_block", [(384, 128), (13, 8)])
def test_channel_chunks(C, max_block, monkeypatch, nan_allocations):
    """Channel counts wider than one tile take the two-loop path."""
    monkeypatch.setattr(kernel_module, "MAX_BLOCK_C", max_block)
    x, gamma = act((1, C, 2, 3, 5), torch.float32), torch.randn(C)
    check(triton_backend.rms_norm_silu(x, gamma, True, 1e-12, None), x, gamma, True)


def test_zero_rows_use_eps():
    x = act((1, 13, 1, 3, 4), torch.float32)
    x[:, :, :, 1] = 0
    y = triton_backend.rms_norm_silu(x, torch.randn(13), False, 1e-12, None)
    assert torch.isfinite(y).all() and (y[:, :, :, 1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_out_into_buffer_view(dtype):
    """The model writes the norm into a conv's input buffer behind its history frames."""
    x, gamma = act((1, 13, 3, 5, 7), dtype), torch.randn(13).to(dtype)
    buf = torch.full((1, 13, 5, 5, 7), float("nan"), dtype=dtype).contiguous(memory_format=CL)
    with use_backend("triton"):
        y = ops.rms_norm_silu(x, gamma.view(13, 1, 1, 1), out=buf[:, :, 2:])
    assert y.data_ptr() == buf[:, :, 2:].data_ptr()
    assert buf[:, :, :2].isnan().all()  # the history frames are not touched
    check(buf[:, :, 2:], x, gamma, True)


def test_opcheck():
    x, gamma = act((1, 13, 2, 3, 5), torch.float32), torch.randn(13)
    out = torch.empty(1, 13, 4, 3, 5).contiguous(memory_format=CL)[:, :, 2:]
    with use_backend("triton"):
        torch.library.opcheck(torch.ops.vaekernels.rms_norm_silu.default, (x, gamma, True, 1e-12))
        torch.library.opcheck(torch.ops.vaekernels.rms_norm_silu_out.default, (x, gamma, False, 1e-12, out))


def test_unsupported_dtype_is_refused():
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="float64"):
        ops.rms_norm_silu(torch.randn(1, 5, 1, 2, 2, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
