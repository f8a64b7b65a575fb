"""Backend choice per op and per call (vaekernels.backends): explicit requests, `auto`'s fall-through, reasons."""
import pytest
import torch

from vaekernels import BackendUnavailable, use_backend
from vaekernels.backends import backend_name, reason, select


def test_backend_choice(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("VAEKERNELS_BACKEND", "torch")
    assert select("rms_norm_silu", x).__name__.endswith(".torch")
    monkeypatch.setenv("VAEKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="expected one of auto"):
        select("rms_norm_silu", x)
    monkeypatch.delenv("VAEKERNELS_BACKEND")
    with pytest.raises(ValueError, match="expected one of auto"):
        with use_backend("fast"):
            pass
    with use_backend("torch"):
        assert select("rms_norm_silu", x).__name__.endswith(".torch")
    # an explicit request that can't run raises, never a silent fallback: neither runs float64
    for name in ("triton", "cpp"):
        with use_backend(name), pytest.raises(BackendUnavailable, match=f"'{name}' was requested"):
            select("rms_norm_silu", x.double())


def test_explicit_request_raises_with_every_reason():
    """Triton on a float64 CPU tensor: the dtype and (outside the interpreter) the device; each is named."""
    x = torch.zeros(1, dtype=torch.float64)
    with use_backend("triton"), pytest.raises(BackendUnavailable) as e:
        select("rms_norm_silu", x)
    assert "float64" in str(e.value)


def test_a_missing_kernel_is_a_reason(monkeypatch):
    import vaekernels.backends as backends
    import vaekernels.backends.cpp as cpp

    x = torch.zeros(1)
    if cpp.supports("dup_up3d", x):
        pytest.skip(f"cpp: {cpp.supports('dup_up3d', x)}")
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delattr(cpp, "dup_up3d")
    assert reason("cpp", "dup_up3d", x) == "it has no dup_up3d kernel"
    with pytest.warns(RuntimeWarning, match="no dup_up3d kernel"):
        assert backend_name("dup_up3d", x) == "torch"  # auto falls through, and says so


def test_auto_falls_back_and_says_so_once(monkeypatch, recwarn):
    import vaekernels.backends as backends

    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delenv("VAEKERNELS_BACKEND", raising=False)
    x = torch.zeros(1, dtype=torch.float64)  # the cpp backend takes float32/bfloat16 only
    assert select("rms_norm_silu", x).__name__.endswith(".torch")
    assert select("causal_conv3d", x).__name__.endswith(".torch")
    fallbacks = [w for w in recwarn if "falling back" in str(w.message)]
    assert len(fallbacks) == 1 and "'cpp' not used" in str(fallbacks[0].message)


def test_auto_leaves_deferred_calls_to_the_next_backend(recwarn):
    """The Triton attention defers CUDA calls to PyTorch's SDPA (faster on paper): `auto` in CUDA's order (here on
    CPU tensors, as the kernel report records a CUDA run) takes torch for the attention and Triton for a conv, with
    no warning (a choice, not a failure); an explicit request still runs the Triton kernel."""
    from vaekernels.backends import triton as triton_backend
    q = torch.zeros(1, 4, 64)
    x, w = torch.zeros(1, 16, 1, 4, 4), torch.zeros(16, 16, 1, 1, 1)
    if triton_backend.supports("spatial_attention", q, q, q):
        pytest.skip(f"triton: {triton_backend.supports('spatial_attention', q, q, q)}")
    q_cuda_like = q.to("meta")  # defer reads the device only
    assert triton_backend.defer("spatial_attention", q_cuda_like, q_cuda_like, q_cuda_like) is None
    with use_backend("auto", order_of="cuda"):
        from vaekernels.backends.triton._launch import recording
        with recording():  # the report's setting: deferral is decided as on CUDA
            assert backend_name("spatial_attention", q, q, q) == "torch"
            assert backend_name("causal_conv3d", x, w, None, None, (1, 1, 1), (0, 0, 0), None, None) == "triton"
    assert not [w_ for w_ in recwarn if "not used" in str(w_.message)]
    with use_backend("triton"):
        assert backend_name("spatial_attention", q, q, q) == "triton"
    with pytest.raises(ValueError, match="order_of"):
        with use_backend("torch", order_of="cuda"):
            pass
