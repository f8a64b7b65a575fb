"""Whole-model CPU benchmarks: each family's fast wrapper against its python_ref, side by side in one run.

Full-size released configurations (Wan2.1: dim=96, z=16; Wan2.2: dim=160, dec_dim=256, z=48), random weights,
the demo's synthetic clip. Every case records in ``extra_info``: the clip, dtype, backend, the model's FLOPs
(counted once on python_ref with torch.utils.flop_counter), effective GFLOP/s, peak memory above the loaded
model in the steady state (after one warm-up call, in a fresh process of its own: ``_peak``), python_ref float32's
median of the same stage measured in this run and its peak (the median of ``REF_PEAKS`` such processes), with the
ratios, and the machine's oneDNN conv ceiling in the case's dtype (conftest.py), which effective GFLOP/s can pass
only by doing fewer FLOPs (Winograd, sub-pixel).

    python -m pytest benchmarks/bench_model_cpu.py -m "not slow"    # 17x128x128, both families
    python -m pytest benchmarks/bench_model_cpu.py -k wan2.2         # one family
    python -m pytest benchmarks/bench_model_cpu.py                  # also 17x256x256, autocast, torch.compile
"""
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import python_ref
from conftest import pedantic_median
from vaekernels import FastWanVAE, Wan2_2_VAE, use_backend
from vaekernels.demo import PeakRSS, moving_clip

ROUNDS = 3
# python_ref's peak is the median of this many fresh processes: its float32 readings of one clip moved by a third
# between identical processes (Wan2.2 encode 245-322 MiB, Wan2.1 encode 352-534; Intel Xeon with AMX, 2026-12-06:
# where glibc's heap puts things), the fast cases' by 1-2% (their large blocks come from the cpp backend's pool)
REF_PEAKS = 3
# family -> (fast wrapper, python_ref wrapper, clip sizes); the wrappers' defaults are the released configurations
FAMILIES = {
    "wan2.1": (FastWanVAE, python_ref.WanVAE, [(17, 128, 128), (17, 256, 256)]),
    "wan2.2": (Wan2_2_VAE, python_ref.Wan2_2_VAE, [(17, 128, 128)]),
}
SLOW_SIZES = {(17, 256, 256)}
# name -> (implementation, dtype, backend); backend None: python_ref, "auto": the package's choice
IMPLS = {
    "python_ref-float32": ("ref", torch.float32, None),
    "python_ref-bf16-autocast": ("ref", torch.bfloat16, None),
    "python_ref-float32-compiled": ("compiled", torch.float32, None),
    "fast-torch-float32": ("fast", torch.float32, "torch"),
    "fast-float32": ("fast", torch.float32, "auto"),
    "fast-bfloat16": ("fast", torch.bfloat16, "auto"),
}
# torch.compile of python_ref compiles for minutes on 2 cores (its warm-up call), and python_ref under bf16
# autocast is slower than float32 where oneDNN has no bf16 convs: they run with the slow ones
SLOW_IMPLS = {"python_ref-float32-compiled", "python_ref-bf16-autocast"}


def _build(family, only=None):
    """The family's wrappers (``only``: the float32 fast one, whose weights every other takes, and that one)."""
    fast_class, ref_class, _ = FAMILIES[family]
    torch.manual_seed(0)
    fast32 = fast_class(vae_pth=None, device="cpu")
    sd = fast32.model.state_dict()
    vaes = {("fast", torch.float32): fast32}
    for kind, cls in (("fast", fast_class), ("ref", ref_class)):
        for dtype in (torch.float32, torch.bfloat16):
            if (kind, dtype) not in vaes and only in (None, (kind, dtype)):
                vaes[(kind, dtype)] = cls(vae_pth=None, device="cpu", dtype=dtype)
                vaes[(kind, dtype)].model.load_state_dict(sd)
    return vaes


_vaes, _inputs, _flops, _ref_runs = {}, {}, {}, {}


def _get(family, kind, dtype):
    """The family's wrappers, built once per family (and the previous family's dropped: their weights and
    prepared copies take GBs)."""
    if family not in _vaes:
        _vaes.clear()
        _vaes[family] = _build(family)
    vaes = _vaes[family]
    if kind == "compiled" and (kind, dtype) not in vaes:
        # inductor compiles the reference's encoder and decoder (called once per chunk) at their first call, one
        # graph per input shape: recompiling with dynamic shapes failed in inductor (torch 2.13, 17x256x256 encode
        # after 17x128x128: "ValueRangeError: Invalid ranges [0:-1]" lowering a conv's padding)
        compiled = FAMILIES[family][1](vae_pth=None, device="cpu")
        compiled.model.load_state_dict(vaes[("fast", torch.float32)].model.state_dict())
        compiled.model.encoder = torch.compile(compiled.model.encoder, dynamic=False)
        compiled.model.decoder = torch.compile(compiled.model.decoder, dynamic=False)
        vaes[(kind, dtype)] = compiled
    return vaes[(kind, dtype)]


def _stage_input(family, size, stage):
    """The clip (encode) or its python_ref float32 latent (decode), made once per family and size."""
    if (family, size) not in _inputs:
        clip = moving_clip(*size)
        [z] = _get(family, "ref", torch.float32).encode([clip])
        _inputs[(family, size)] = {"encode": [clip], "decode": [z]}
    return _inputs[(family, size)][stage]


def _count_flops(family, size, stage):
    if (family, size, stage) not in _flops:
        with FlopCounterMode(display=False) as counter:
            getattr(_get(family, "ref", torch.float32), stage)(_stage_input(family, size, stage))
        _flops[(family, size, stage)] = counter.get_total_flops()
    return _flops[(family, size, stage)]


def _ref_run(timer, family, size, stage):
    """python_ref float32's median seconds for the stage, measured once per family and size as the cases measure
    theirs (a warm-up call, then the timed rounds), and its peak bytes (``_peak``, median of ``REF_PEAKS``
    processes), for their ratios."""
    if (family, size, stage) not in _ref_runs:
        run, arg = getattr(_get(family, "ref", torch.float32), stage), _stage_input(family, size, stage)
        run(arg)
        median = timer(lambda: run(arg), rounds=ROUNDS, warmup=False)
        peaks = sorted(_peak_in_fresh_process(family, size, stage, "python_ref-float32") for _ in range(REF_PEAKS))
        _ref_runs[(family, size, stage)] = median, peaks[len(peaks) // 2]
    return _ref_runs[(family, size, stage)]


def _peak(family, size, stage, impl):
    """The peak resident memory of one call of ``impl``'s stage above the level before it, after a warm-up call
    (bytes), in a process that builds only the wrappers it needs. A decode takes a random latent of the clip's
    latent shape (its memory depends on shapes, not values), sparing python_ref's encode of the clip."""
    kind, dtype, backend = IMPLS[impl]
    vaes = _build(family, only=(kind, dtype))
    vae, model = vaes[(kind, dtype)], vaes[("fast", torch.float32)].model
    t, h, w = size
    if stage == "encode":
        arg = [moving_clip(*size)]
    else:
        arg = [torch.randn(model.z_dim, model.spec.latent_frames(t), *model.latent_size(h, w),
                           generator=torch.Generator().manual_seed(0))]
    run = getattr(vae, stage)
    with use_backend(backend or "auto"):
        run(arg)  # warm-up outside the memory window: oneDNN kernel generation, prepared weights
        with PeakRSS(torch.device("cpu")) as mem:
            run(arg)
    return mem.peak


def _peak_in_fresh_process(family, size, stage, impl):
    """``_peak`` in a fresh process (this file run as a script): a process that ran other cases first carries their
    leftovers (glibc arenas, oneDNN scratch), and python_ref's own peaks read from it moved with what ran before
    (its Wan2.2 float32 encode: 224 and 348 MiB in two shared runs, 269-312 in fresh processes)."""
    done = subprocess.run([sys.executable, __file__, family, "x".join(map(str, size)), stage, impl],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def _params():
    for family, (_, _, sizes) in FAMILIES.items():
        for size in sizes:
            for stage in ("encode", "decode"):
                for impl in IMPLS:
                    marks = [pytest.mark.slow] if size in SLOW_SIZES or impl in SLOW_IMPLS else []
                    yield pytest.param(family, size, stage, impl, marks=marks,
                                       id=f"{family}-{'x'.join(map(str, size))}-{stage}-{impl}")


@pytest.mark.parametrize("family, size, stage, impl", list(_params()))
def test_model(benchmark, timer, conv_ceiling, family, size, stage, impl):
    kind, dtype, backend = IMPLS[impl]
    vae, arg = _get(family, kind, dtype), _stage_input(family, size, stage)
    flops = _count_flops(family, size, stage)
    ref_median, ref_peak = _ref_run(timer, family, size, stage)
    benchmark.group = f"{family} {stage} {'x'.join(map(str, size))}"
    run = getattr(vae, stage)
    with use_backend(backend or "auto"):
        run(arg)  # warm-up: oneDNN kernel generation, prepared weights, compilation
        median = pedantic_median(benchmark, lambda: run(arg), rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if median is None:
        return
    # (torch.compile's peak is not measured: a fresh process would compile again, for minutes)
    peak = _peak_in_fresh_process(family, size, stage, impl) if kind != "compiled" else None
    benchmark.extra_info.update({
        "family": family, "clip": "x".join(map(str, size)), "dtype": str(dtype), "backend": backend or "python_ref",
        "gflop": round(flops / 1e9, 1), "gflops_per_s": round(flops / median / 1e9, 1),
        "python_ref_float32_median_s": round(ref_median, 3), "speedup_vs_python_ref": round(ref_median / median, 2),
        "python_ref_float32_peak_mib": round(ref_peak / 2 ** 20), "conv_ceiling_gflop_per_s": conv_ceiling(dtype),
    })
    if peak is not None:
        benchmark.extra_info.update({"peak_mib_above_model": round(peak / 2 ** 20),
                                     "peak_vs_python_ref": round(peak / ref_peak, 2)})


if __name__ == "__main__":  # one peak measurement: python bench_model_cpu.py FAMILY TxHxW STAGE IMPL
    print(_peak(sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x")), sys.argv[3], sys.argv[4]))
