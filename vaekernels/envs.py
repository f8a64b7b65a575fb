"""Every environment variable vaekernels reads, read here and nowhere else (the README lists them).

Run time, read at each use (so a process may change them between calls):
    VAEKERNELS_BACKEND    auto (default) | torch | cpp | triton: the backend every op must run on
    VAEKERNELS_CHUNK_MB   budget in MiB for the largest activation of one chunk (default: per device and dtype)
    VAEKERNELS_CPU_AMX    0: the C++ backend acts as on a CPU without AMX (read when the extension loads)
    VAEKERNELS_REPORT_ARCHS  comma-separated GPU architectures the kernel report compiles for (default 80,90)
    TRITON_INTERPRET      1: Triton kernels run on CPU tensors in Triton's interpreter; Triton reads it once,
                          when a kernel is defined, so its value when vaekernels is imported is the one that counts
    WORLD_SIZE, LOCAL_RANK  set by torchrun: the command line splits its calls over the processes when WORLD_SIZE > 1,
                          each on the GPU of its LOCAL_RANK (torch.distributed reads the rest of torchrun's variables)
Build time, read by setup.py (which loads this file by path: nothing else of the package exists then):
    VAEKERNELS_CPU_ARCH   -march of the C++ extension (default native; "" for none)
    VAEKERNELS_BUILD_EXT  0: install without the C++ extension

This module imports nothing of the package, so every layer may read it.
"""
from __future__ import annotations

import math
import os

BACKENDS = ("torch", "triton", "cpp")

# read once, as Triton itself does (see the module doc)
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend() -> str:
    """The backend requested by the environment: ``auto`` when unset or empty."""
    name = os.environ.get("VAEKERNELS_BACKEND", "") or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"VAEKERNELS_BACKEND: expected one of auto, {', '.join(BACKENDS)}; got {name!r}")
    return name


def chunk_mb() -> float | None:
    """The chunk budget in MiB set by the environment, or None when unset."""
    env = os.environ.get("VAEKERNELS_CHUNK_MB")
    if not env:
        return None
    try:
        mb = float(env)
    except ValueError:
        mb = -1.0
    if not (mb > 0 and math.isfinite(mb)):
        raise ValueError(f"VAEKERNELS_CHUNK_MB must be a positive, finite number of MiB, got {env!r}")
    return mb


def report_archs() -> tuple[int, ...]:
    """The sm_XX architectures vaekernels.kernel_report compiles for (VAEKERNELS_REPORT_ARCHS, default 80,90)."""
    env = os.environ.get("VAEKERNELS_REPORT_ARCHS", "80,90")
    archs = tuple(int(a) for a in env.split(",") if a.strip().isdigit())
    if not archs or any(a not in (80, 90) for a in archs) or len(archs) != len(env.split(",")):
        raise ValueError(f"VAEKERNELS_REPORT_ARCHS must list 80 and/or 90, comma-separated; got {env!r}")
    return archs


def cpu_amx() -> bool:
    """False when VAEKERNELS_CPU_AMX=0: the C++ backend then takes the paths of CPUs without AMX."""
    return os.environ.get("VAEKERNELS_CPU_AMX", "1") != "0"


def cpu_arch() -> str:
    """-march for the C++ extension (build time)."""
    return os.environ.get("VAEKERNELS_CPU_ARCH", "native")


def build_ext() -> bool:
    """Whether setup.py builds the C++ extension (build time)."""
    return os.environ.get("VAEKERNELS_BUILD_EXT", "1") != "0"


def torchrun() -> tuple[int, int]:
    """``(WORLD_SIZE, LOCAL_RANK)`` as torchrun sets them; ``(1, 0)`` outside torchrun."""
    values = []
    for name, default in (("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < (1 if name == "WORLD_SIZE" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'WORLD_SIZE' else 'non-negative'} int (as "
                             f"torchrun sets it), got {text!r}")
        values.append(value)
    return values[0], values[1]
