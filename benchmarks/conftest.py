"""Shared by the benchmarks: the side-by-side timer for the reference measured in the same run."""
import statistics
import time

import pytest

ROUNDS = 3


def median_seconds(fn, rounds=ROUNDS):
    """Median wall time of ``fn`` over ``rounds`` calls, after one warm-up call."""
    fn()  # warm-up: allocator, oneDNN primitive creation, weight packing
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="session")
def timer():
    return median_seconds
