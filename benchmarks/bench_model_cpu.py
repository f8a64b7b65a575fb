"""Whole-model CPU benchmarks: each family's fast wrapper against its python_ref, side by side in one run.

Full-size released configurations (Wan2.1: dim=96, z=16; Wan2.2: dim=160, dec_dim=256, z=48), random weights,
the demo's synthetic clip. Every case records in ``extra_info``: the clip, dtype, backend, the model's FLOPs
(counted once on python_ref with torch.utils.flop_counter), effective GFLOP/s, peak memory above the loaded
model in the steady state (after one warm-up call), python_ref float32's median and peak of the same stage
measured in this run, with the ratios, and the machine's oneDNN conv ceiling in the case's dtype
(conftest.py), which effective GFLOP/s can pass only by doing fewer FLOPs (Winograd, sub-pixel).

    python -m pytest benchmarks/bench_model_cpu.py -m "not slow"    # 17x128x128, both families
    python -m pytest benchmarks/bench_model_cpu.py -k wan2.2         # one family
    python -m pytest benchmarks/bench_model_cpu.py                  # also 17x256x256, autocast, torch.compile
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import python_ref
from conftest import pedantic_median
from vaekernels import FastWanVAE, Wan2_2_VAE, use_backend
from vaekernels.demo import PeakRSS, moving_clip

ROUNDS = 3
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


def _build(family):
    fast_class, ref_class, _ = FAMILIES[family]
    torch.manual_seed(0)
    fast32 = fast_class(vae_pth=None, device="cpu")
    sd = fast32.model.state_dict()
    fast16 = fast_class(vae_pth=None, device="cpu", dtype=torch.bfloat16)
    fast16.model.load_state_dict(sd)
    vaes = {("fast", torch.float32): fast32, ("fast", torch.bfloat16): fast16}
    for dtype in (torch.float32, torch.bfloat16):
        vaes[("ref", dtype)] = ref_class(vae_pth=None, device="cpu", dtype=dtype)
        vaes[("ref", dtype)].model.load_state_dict(sd)
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
    """python_ref float32's median seconds and peak bytes for the stage, measured once per family and size as the
    cases measure theirs (a warm-up call, then the timed rounds inside the memory window), for their ratios."""
    if (family, size, stage) not in _ref_runs:
        run, arg = getattr(_get(family, "ref", torch.float32), stage), _stage_input(family, size, stage)
        run(arg)
        with PeakRSS(torch.device("cpu")) as mem:
            median = timer(lambda: run(arg), rounds=ROUNDS, warmup=False)
        _ref_runs[(family, size, stage)] = median, mem.peak
    return _ref_runs[(family, size, stage)]


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
        run(arg)  # warm-up outside the memory window: oneDNN kernel generation, prepared weights, compilation
        with PeakRSS(torch.device("cpu")) as mem:
            median = pedantic_median(benchmark, lambda: run(arg), rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if median is None:
        return
    benchmark.extra_info.update({
        "family": family, "clip": "x".join(map(str, size)), "dtype": str(dtype), "backend": backend or "python_ref",
        "gflop": round(flops / 1e9, 1), "gflops_per_s": round(flops / median / 1e9, 1),
        "peak_mib_above_model": round(mem.peak / 2 ** 20),
        "python_ref_float32_median_s": round(ref_median, 3), "speedup_vs_python_ref": round(ref_median / median, 2),
        # python_ref's own peak moves between runs (370-613 MiB for one encode), so the ratio is of the same run
        "python_ref_float32_peak_mib": round(ref_peak / 2 ** 20), "peak_vs_python_ref": round(mem.peak / ref_peak, 2),
        "conv_ceiling_gflop_per_s": conv_ceiling(dtype),
    })
