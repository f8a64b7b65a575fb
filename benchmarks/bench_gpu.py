"""GPU benchmarks: the Triton backend against the torch backend per op, and FastWanVAE against
python_ref for full encode/decode (81 frames, bf16), side by side in one run.

    pytest benchmarks/bench_gpu.py --benchmark-columns=median,rounds --benchmark-sort=name

pytest-benchmark times vaekernels; the reference is timed in the same test (median over the same
number of rounds, CUDA-synchronised) and recorded in ``extra_info`` with the ratio, effective
TFLOP/s of both (the model's FLOPs over time; the H100 SXM datasheet peak is 989 dense bf16
TFLOP/s, see ROOFLINE.md) and peak memory (torch.cuda.max_memory_allocated).
Op shapes come from the full-size model (dim=96) at 480x832.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from vaekernels import use_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (these benchmarks time the Triton kernels and the full model)")

DTYPE = torch.bfloat16
CL = torch.channels_last_3d
SIZES = pytest.mark.parametrize("h, w", [(480, 832), (720, 1280)], ids=["480p", "720p"])
FRAMES = 81


def _timed(fn):
    """(median seconds, peak bytes) of ``fn`` after one warm-up call (compilation, autotuning)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), torch.cuda.max_memory_allocated()


def _run(benchmark, fast, ref, flops, rounds, **info):
    """Time ``fast`` with pytest-benchmark and ``ref`` by hand on the same inputs; record both."""
    ref_s, ref_peak = _timed(ref)
    fast()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def synced():
        fast()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)
    fast_s = benchmark.stats.stats.median
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

    _run(benchmark, with_backend("triton"), with_backend("torch"), flops, rounds=10, backend="triton",
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
def test_spatial_attention(benchmark):
    n, length, d = 4, (480 // 8) * (832 // 8), 384  # the middle blocks' frames: head dim 384
    q, k, v = torch.randn(n, length, 3 * d, device="cuda", dtype=DTYPE).split(d, dim=-1)
    _op(benchmark, "spatial_attention", (q, k, v), flops=4.0 * n * length * length * d)


@pytest.mark.benchmark(group="op:causal_conv3d")
@pytest.mark.parametrize("c", [96, 384])
def test_causal_conv3d(benchmark, c):
    x = _act(1, c, 4, 480 // (384 // c), 832 // (384 // c))
    weight = torch.randn(c, c, 3, 3, 3, device="cuda", dtype=DTYPE) * c ** -1.5
    bias = torch.zeros(c, device="cuda", dtype=DTYPE)
    kwargs = dict(cache=_act(1, c, 2, *x.shape[3:]), padding=(1, 1, 1))  # as in a residual block
    _op(benchmark, "causal_conv3d", (x, weight, bias), flops=2.0 * weight.numel() * x[0, 0].numel(), kwargs=kwargs)


@pytest.mark.benchmark(group="op:upsample_conv2d")
def test_upsample_conv2d(benchmark):
    x = _act(1, 384, 4, 480 // 4, 832 // 4)
    weight = torch.randn(192, 384, 3, 3, device="cuda", dtype=DTYPE) * 384 ** -1
    _op(benchmark, "upsample_conv2d", (x, weight, torch.zeros(192, device="cuda", dtype=DTYPE)), flops=2.0 * weight.numel() * 4 * x[0, 0].numel())


@pytest.fixture(scope="module")
def models():
    """FastWanVAE with random weights and python_ref's WanVAE holding the same ones."""
    from python_ref import WanVAE
    from vaekernels import FastWanVAE

    fast = FastWanVAE(z_dim=16, vae_pth=None, dtype=DTYPE, device="cuda")
    ref = WanVAE(z_dim=16, vae_pth=None, dtype=DTYPE, device="cuda")
    ref.model.load_state_dict(fast.model.state_dict())
    return fast, ref


def _model_flops(stage, h, w):
    """Conv + attention FLOPs of the whole pass, from the roofline walk."""
    import roofline

    with torch.device("meta"):
        model = roofline.WanVAEModel(**roofline.RELEASED)
    return roofline.totals(roofline.passes(model, h, w, FRAMES)[stage])[0]


@pytest.mark.benchmark(group="model:encode")
@SIZES
def test_encode(benchmark, models, h, w):
    fast, ref = models
    video = torch.rand(3, FRAMES, h, w, device="cuda").mul(2).sub(1)
    _run(benchmark, lambda: fast.encode([video]), lambda: ref.encode([video]), _model_flops("encode", h, w),
         rounds=3, backend="FastWanVAE", reference="python_ref.WanVAE", shape=[3, FRAMES, h, w])


@pytest.mark.benchmark(group="model:decode")
@SIZES
def test_decode(benchmark, models, h, w):
    fast, ref = models
    z = torch.randn(16, 1 + (FRAMES - 1) // 4, h // 8, w // 8, device="cuda")
    _run(benchmark, lambda: fast.decode([z]), lambda: ref.decode([z]), _model_flops("decode", h, w),
         rounds=3, backend="FastWanVAE", reference="python_ref.WanVAE", shape=list(z.shape))
