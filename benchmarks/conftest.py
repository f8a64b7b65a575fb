"""Shared by the benchmarks: the one timer (for the reference measured side by side in the same run, and for the
GPU cases), the conv shapes of each family taken from its released configuration, and this machine's conv
ceiling measured in the same run."""
import statistics
import time

import pytest
import torch

from vaekernels.models import MODELS

ROUNDS = 3


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn, rounds=ROUNDS, warmup=True):
    """Median wall time of ``fn`` over ``rounds`` calls (CUDA-synchronised where there is a GPU), after one warm-up
    call unless the caller made it."""
    if warmup:
        fn()  # allocator, oneDNN primitive creation, weight packing, kernel compilation
        _sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="session")
def timer():
    return median_seconds


def pedantic_median(benchmark, fn, **options):
    """pytest-benchmark's pedantic run of ``fn`` and its median seconds; None under ``--benchmark-disable``, where
    ``fn`` ran once (a smoke test) and there is nothing to report: the case then returns."""
    benchmark.pedantic(fn, **options)
    return None if benchmark.disabled else benchmark.stats.stats.median


def pedantic_median_beside(benchmark, fn, reference, **options):
    """``pedantic_median`` of ``fn`` with a timed call of ``reference`` before each of its rounds (pedantic's setup,
    untimed by it), so that the two alternate in the same stretch of the run: (``fn``'s median, ``reference``'s
    median over the measured rounds); (None, None) under ``--benchmark-disable``. Timed apart, python_ref's training
    step read 15.98 s at the start of a run and 13.76 s later in it."""
    times = []

    def timed_reference():
        start = time.perf_counter()
        reference()
        _sync()
        times.append(time.perf_counter() - start)

    median = pedantic_median(benchmark, fn, setup=timed_reference, **options)
    if median is None:
        return None, None
    return median, statistics.median(times[-options.get("rounds", 1):])


def stage_convs(side=128):
    """{family: [(channels, plane side)]}: the 3x3x3 convs of each resolution level of the released models on a
    ``side`` x ``side`` clip (encoder and decoder widths), from the registry's configurations."""
    shapes = {}
    for name, entry in MODELS.items():
        cfg = entry.released
        with torch.device("meta"):  # shapes only
            patch = entry.model_class(**cfg).spec.patch_size
        widths = {cfg["dim"]} | ({cfg["dec_dim"]} if "dec_dim" in cfg else set())
        shapes[name] = sorted({(w * m, side // patch // 2 ** level) for w in widths
                               for level, m in enumerate(cfg["dim_mult"][:-1])})
    return shapes


@pytest.fixture(scope="session")
def conv_ceiling():
    """``conv_ceiling(dtype)``: GFLOP/s of oneDNN's channels-last 3x3x3 conv on this machine, its weight packed
    once (the best of every family's level shapes, 6 frames): the rate a direct conv can reach here, measured once
    per dtype (bf16 as float32 where oneDNN has no bf16 convs)."""
    rates = {}

    def measure(dtype):
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            # oneDNN has no bf16 convs on this CPU (no AVX-512): bf16 convs compute in float32, whose rate is theirs
            return measure(torch.float32)
        if dtype not in rates:
            best, t = 0.0, 6
            for c, hw in sorted({s for shapes in stage_convs().values() for s in shapes}):
                x = torch.randn(1, c, t, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last_3d)
                w = torch.ops.mkldnn._reorder_convolution_weight(torch.randn(c, c, 3, 3, 3).to(dtype), [0, 1, 1],
                                                                 [1, 1, 1], [1, 1, 1], 1, list(x.shape))
                seconds = median_seconds(lambda: torch.ops.mkldnn._convolution_pointwise(
                    x, w, None, [0, 1, 1], [1, 1, 1], [1, 1, 1], 1, "none", [], None))
                best = max(best, 2 * c * c * 27 * (t - 2) * hw * hw / seconds / 1e9)
            rates[dtype] = round(best, 1)
        return rates[dtype]

    return measure
