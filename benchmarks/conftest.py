"""Shared by the benchmarks: the side-by-side timer for the reference measured in the same run, and this
machine's conv ceiling measured in the same run."""
import statistics
import time

import pytest
import torch

ROUNDS = 3


def median_seconds(fn, rounds=ROUNDS, warmup=True):
    """Median wall time of ``fn`` over ``rounds`` calls, after one warm-up call unless the caller made it."""
    if warmup:
        fn()  # allocator, oneDNN primitive creation, weight packing
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="session")
def timer():
    return median_seconds


# Full-size model convs of the resolutions that dominate its FLOPs: (channels, frames in, plane side)
CEILING_SHAPES = [(96, 6, 128), (192, 6, 64), (384, 6, 32)]


@pytest.fixture(scope="session")
def conv_ceiling():
    """``conv_ceiling(dtype)``: GFLOP/s of oneDNN's channels-last 3x3x3 conv on this machine, its weight packed
    once (the best of the shapes above): the rate a direct conv can reach here, measured once per dtype (bf16 as
    float32 where oneDNN has no bf16 convs)."""
    rates = {}

    def measure(dtype):
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            # oneDNN has no bf16 convs on this CPU (no AVX-512): bf16 convs compute in float32, whose rate is theirs
            return measure(torch.float32)
        if dtype not in rates:
            best = 0.0
            for c, t, hw in CEILING_SHAPES:
                x = torch.randn(1, c, t, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last_3d)
                w = torch.ops.mkldnn._reorder_convolution_weight(torch.randn(c, c, 3, 3, 3).to(dtype), [0, 1, 1],
                                                                 [1, 1, 1], [1, 1, 1], 1, list(x.shape))
                seconds = median_seconds(lambda: torch.ops.mkldnn._convolution_pointwise(
                    x, w, None, [0, 1, 1], [1, 1, 1], [1, 1, 1], 1, "none", [], None))
                best = max(best, 2 * c * c * 27 * (t - 2) * hw * hw / seconds / 1e9)
            rates[dtype] = round(best, 1)
        return rates[dtype]

    return measure
