"""GPU benchmarks: the Triton backend against the torch backend per op, and each family's fast wrapper against
its python_ref for whole encodes and decodes (bf16), side by side in one run. Ready to run; no GPU speed has been
measured yet.

    pytest benchmarks/bench_gpu.py --benchmark-columns=median,rounds --benchmark-sort=name

pytest-benchmark times vaekernels; the reference is timed in the same test with the benchmarks' one timer
(conftest.median_seconds: CUDA-synchronised medians over as many rounds) and recorded in ``extra_info`` with the
ratio, effective TFLOP/s of both (the model's FLOPs over time, from the roofline walk; the H100 SXM datasheet
peak is 989 dense bf16 TFLOP/s, see ROOFLINE.md) and peak memory (torch.cuda.max_memory_allocated).
Op shapes come from the full-size models at 480x832: Wan2.1's widths (96, 384) and Wan2.2's (its 1024-channel
decoder, its attention at head dims 640 and 1024, its shortcuts).
"""
from __future__ import annotations

import pytest
import torch

import python_ref
from conftest import median_seconds, pedantic_median
from vaekernels import FastWanVAE, Wan2_2_VAE, use_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (these benchmarks time the Triton kernels and the full model)")

DTYPE = torch.bfloat16
CL = torch.channels_last_3d
# family -> (fast wrapper, python_ref wrapper, (H, W, frames) of the model cases)
FAMILIES = {
    "wan2.1": (FastWanVAE, python_ref.WanVAE, [(480, 832, 81), (720, 1280, 81)]),
    "wan2.2": (Wan2_2_VAE, python_ref.Wan2_2_VAE, [(480, 832, 81), (480, 832, 121), (704, 1280, 81),
                                                   (704, 1280, 121)]),
}


def _peak(fn):
    """(median seconds, peak bytes) of ``fn`` after one warm-up call (compilation, autotuning)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return median_seconds(fn, warmup=False), torch.cuda.max_memory_allocated()


def _run(benchmark, fast, ref, flops, rounds, **info):
    """Time ``fast`` with pytest-benchmark and ``ref`` with the shared timer on the same inputs; record both."""
    ref_s, ref_peak = _peak(ref)
    fast()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def synced():
        fast()
        torch.cuda.synchronize()

    fast_s = pedantic_median(benchmark, synced, rounds=rounds, iterations=1, warmup_rounds=1)
    if fast_s is None:
        return
    benchmark.extra_info.update(
        dtype=str(DTYPE), device=torch.cuda.get_device_name(), ref_median_ms=ref_s * 1e3,
        speedup=ref_s / fast_s, tflops=flops / fast_s / 1e12, ref_tflops=flops / ref_s / 1e12,
        peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30, ref_peak_gib=ref_peak / 2 ** 30, **info)


def _op(benchmark, name, args, flops, kwargs=None, **info):
    from vaekernels import ops

    def with_backend(backend):
        def call():
            with use_backend(backend):
                getattr(ops, name)(*args, **(kwargs or {}))
        return call

    _run(benchmark, with_backend("auto"), with_backend("torch"), flops, rounds=10, backend="auto (triton where it can)",
         reference="torch backend", shape=[list(a.shape) for a in args if torch.is_tensor(a)], **info)


def _act(*shape):
    return torch.randn(*shape, device="cuda", dtype=DTYPE).contiguous(memory_format=CL)


@pytest.mark.benchmark(group="op:rms_norm_silu")
@pytest.mark.parametrize("c", [96, 192, 384])
def test_rms_norm_silu(benchmark, c):
    x = _act(1, c, 4, 480 // (384 // c), 832 // (384 // c))
    _op(benchmark, "rms_norm_silu", (x, torch.ones(c, device="cuda", dtype=DTYPE)), flops=0,
        bytes_moved=2 * x.numel() * x.element_size())


@pytest.mark.benchmark(group="op:spatial_attention")
@pytest.mark.parametrize("d", [384, 640, 1024])  # Wan2.1's middle blocks; Wan2.2's encoder and decoder (fall back)
def test_spatial_attention(benchmark, d):
    n, length = 4, (480 // (16 if d > 384 else 8)) * (832 // (16 if d > 384 else 8))
    q, k, v = torch.randn(n, length, 3 * d, device="cuda", dtype=DTYPE).split(d, dim=-1)
    _op(benchmark, "spatial_attention", (q, k, v), flops=4.0 * n * length * length * d)


@pytest.mark.benchmark(group="op:causal_conv3d")
@pytest.mark.parametrize("c, down", [(96, 1), (384, 4), (1024, 16)])  # channels, downsampling of 480x832
def test_causal_conv3d(benchmark, c, down):
    x = _act(1, c, 4, 480 // down, 832 // down)
    weight = torch.randn(c, c, 3, 3, 3, device="cuda", dtype=DTYPE) * c ** -1.5
    bias = torch.zeros(c, device="cuda", dtype=DTYPE)
    kwargs = dict(cache=_act(1, c, 2, *x.shape[3:]), padding=(1, 1, 1))  # as in a residual block
    _op(benchmark, "causal_conv3d", (x, weight, bias), flops=2.0 * weight.numel() * x[0, 0].numel(), kwargs=kwargs)


@pytest.mark.benchmark(group="op:upsample_conv2d")
@pytest.mark.parametrize("cin, cout, down, residual", [(384, 192, 4, False), (512, 512, 4, True)])
def test_upsample_conv2d(benchmark, cin, cout, down, residual):
    x = _act(1, cin, 4, 480 // down, 832 // down)
    weight = torch.randn(cout, cin, 3, 3, device="cuda", dtype=DTYPE) * cin ** -1
    kwargs = dict(residual=_act(1, cout, 4, 960 // down, 1664 // down)) if residual else {}
    _op(benchmark, "upsample_conv2d", (x, weight, torch.zeros(cout, device="cuda", dtype=DTYPE)),
        flops=2.0 * weight.numel() * 4 * x[0, 0].numel(), kwargs=kwargs)


@pytest.mark.benchmark(group="op:shortcuts")
def test_avg_down3d(benchmark):
    x = _act(1, 160, 17, 240, 416)  # Wan2.2's first encoder stage at 480x832 (2x2 patches)
    _op(benchmark, "avg_down3d", (x,), flops=0, kwargs=dict(factor_t=1, factor_s=2, out_channels=160),
        bytes_moved=1.25 * x.numel() * x.element_size())


@pytest.mark.benchmark(group="op:shortcuts")
def test_dup_up3d(benchmark):
    x = _act(1, 1024, 9, 60, 104)  # Wan2.2's decoder stage 2 at 480x832
    _op(benchmark, "dup_up3d", (x,), flops=0, kwargs=dict(factor_t=1, factor_s=2, out_channels=512),
        bytes_moved=3 * x.numel() * x.element_size())


_models = {}


def _models_of(family):
    """The family's fast wrapper with random weights and its python_ref wrapper holding the same ones."""
    if family not in _models:
        _models.clear()  # one family's models at a time: Wan2.2's take GBs
        fast_class, ref_class, _ = FAMILIES[family]
        fast = fast_class(vae_pth=None, dtype=DTYPE, device="cuda")
        ref = ref_class(vae_pth=None, dtype=DTYPE, device="cuda")
        ref.model.load_state_dict(fast.model.state_dict())
        _models[family] = fast, ref
    return _models[family]


def _model_flops(family, stage, h, w, t):
    """Conv + attention FLOPs of the whole pass, from the roofline walk."""
    import roofline
    from vaekernels.models import MODELS

    entry = MODELS[family]
    with torch.device("meta"):
        model = entry.model_class(**entry.released)
    return roofline.totals(roofline.passes(model, h, w, t)[stage])[0]


MODEL_CASES = [pytest.param(family, size, id=f"{family}-{size[0]}x{size[1]}x{size[2]}")
               for family, (_, _, sizes) in FAMILIES.items() for size in sizes]


@pytest.mark.benchmark(group="model:encode")
@pytest.mark.parametrize("family, size", MODEL_CASES)
def test_encode(benchmark, family, size):
    fast, ref = _models_of(family)
    h, w, t = size
    video = torch.rand(3, t, h, w, device="cuda").mul(2).sub(1)
    _run(benchmark, lambda: fast.encode([video]), lambda: ref.encode([video]), _model_flops(family, "encode", h, w, t),
         rounds=3, backend=type(fast).__name__, reference=f"python_ref.{type(ref).__name__}", shape=[3, t, h, w])


@pytest.mark.benchmark(group="model:decode")
@pytest.mark.parametrize("family, size", MODEL_CASES)
def test_decode(benchmark, family, size):
    fast, ref = _models_of(family)
    h, w, t = size
    f = fast.model.spec.space_factor
    z = torch.randn(fast.model.z_dim, 1 + (t - 1) // 4, h // f, w // f, device="cuda")
    _run(benchmark, lambda: fast.decode([z]), lambda: ref.decode([z]), _model_flops(family, "decode", h, w, t),
         rounds=3, backend=type(fast).__name__, reference=f"python_ref.{type(ref).__name__}", shape=list(z.shape))
