"""Whole-model CPU benchmarks: FastWanVAE against python_ref, side by side in one run.

Full-size configuration (dim=96, z_dim=16), random weights, the demo's synthetic clip. Every
case records in ``extra_info``: the clip, dtype, backend, the model's FLOPs (counted once on
python_ref with torch.utils.flop_counter), effective GFLOP/s, peak memory above the loaded
model in the steady state (after one warm-up call), python_ref float32's median and peak of the same
stage measured in this run, with the ratios, and the machine's oneDNN conv ceiling in the case's
dtype (conftest.py), which effective GFLOP/s can pass only by doing fewer FLOPs (Winograd, sub-pixel).

    python -m pytest benchmarks/bench_model_cpu.py -m "not slow"    # 17x128x128
    python -m pytest benchmarks/bench_model_cpu.py                  # also 17x256x256 and torch.compile
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import python_ref
from vaekernels import FastWanVAE, use_backend
from vaekernels.demo import PeakRSS, moving_clip

ROUNDS = 3
SIZES = [pytest.param((17, 128, 128), id="17x128x128"),
         pytest.param((17, 256, 256), id="17x256x256", marks=pytest.mark.slow)]
# name -> (implementation, dtype, backend); backend None: python_ref, "auto": the package's choice
IMPLS = {
    "python_ref-float32": ("ref", torch.float32, None),
    "python_ref-bf16-autocast": ("ref", torch.bfloat16, None),
    "python_ref-float32-compiled": ("compiled", torch.float32, None),
    "fast-torch-float32": ("fast", torch.float32, "torch"),
    "fast-float32": ("fast", torch.float32, "auto"),
    "fast-bfloat16": ("fast", torch.bfloat16, "auto"),
}
# torch.compile of python_ref compiles for minutes on 2 cores (its warm-up call), so it runs with the slow ones
SLOW_IMPLS = {"python_ref-float32-compiled"}


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    fast32 = FastWanVAE(vae_pth=None, device="cpu")
    sd = fast32.model.state_dict()
    fast16 = FastWanVAE(vae_pth=None, device="cpu", dtype=torch.bfloat16)
    fast16.model.load_state_dict(sd)
    refs = {}
    for dtype in (torch.float32, torch.bfloat16):
        refs[dtype] = python_ref.WanVAE(vae_pth=None, device="cpu", dtype=dtype)
        refs[dtype].model.load_state_dict(sd)
    # inductor compiles the reference's encoder and decoder (called once per chunk) at their first call, one graph
    # per input shape: recompiling with dynamic shapes failed in inductor (torch 2.13, 17x256x256 encode after
    # 17x128x128: "ValueRangeError: Invalid ranges [0:-1]" lowering a conv's padding)
    compiled = python_ref.WanVAE(vae_pth=None, device="cpu")
    compiled.model.load_state_dict(sd)
    compiled.model.encoder = torch.compile(compiled.model.encoder, dynamic=False)
    compiled.model.decoder = torch.compile(compiled.model.decoder, dynamic=False)
    return {("fast", torch.float32): fast32, ("fast", torch.bfloat16): fast16,
            ("ref", torch.float32): refs[torch.float32], ("ref", torch.bfloat16): refs[torch.bfloat16],
            ("compiled", torch.float32): compiled}


_inputs, _flops, _ref_runs = {}, {}, {}


def _stage_input(vaes, size, stage):
    """The clip (encode) or its python_ref float32 latent (decode), made once per size."""
    if size not in _inputs:
        clip = moving_clip(*size)
        [z] = vaes[("ref", torch.float32)].encode([clip])
        _inputs[size] = {"encode": [clip], "decode": [z]}
    return _inputs[size][stage]


def _count_flops(vaes, size, stage):
    if (size, stage) not in _flops:
        ref = vaes[("ref", torch.float32)]
        with FlopCounterMode(display=False) as counter:
            getattr(ref, stage)(_stage_input(vaes, size, stage))
        _flops[(size, stage)] = counter.get_total_flops()
    return _flops[(size, stage)]


def _ref_run(vaes, timer, size, stage):
    """python_ref float32's median seconds and peak bytes for the stage, measured once per size as the cases
    measure theirs (a warm-up call, then the timed rounds inside the memory window), for their ratios."""
    if (size, stage) not in _ref_runs:
        ref, arg = vaes[("ref", torch.float32)], _stage_input(vaes, size, stage)
        run = getattr(ref, stage)
        run(arg)
        with PeakRSS(torch.device("cpu")) as mem:
            median = timer(lambda: run(arg), warmup=False)
        _ref_runs[(size, stage)] = median, mem.peak
    return _ref_runs[(size, stage)]


@pytest.mark.parametrize("impl", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_IMPLS else name
                                  for name in IMPLS])
@pytest.mark.parametrize("stage", ["encode", "decode"])
@pytest.mark.parametrize("size", SIZES)
def test_model(benchmark, timer, conv_ceiling, vaes, impl, stage, size):
    kind, dtype, backend = IMPLS[impl]
    vae, arg = vaes[(kind, dtype)], _stage_input(vaes, size, stage)
    flops = _count_flops(vaes, size, stage)
    ref_median, ref_peak = _ref_run(vaes, timer, size, stage)
    benchmark.group = f"{stage} {size[0]}x{size[1]}x{size[2]}"
    run = getattr(vae, stage)
    with use_backend(backend or "auto"):
        run(arg)  # warm-up outside the memory window: oneDNN kernel generation, prepared weights, compilation
        with PeakRSS(torch.device("cpu")) as mem:
            benchmark.pedantic(lambda: run(arg), rounds=ROUNDS, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "clip": "x".join(map(str, size)), "dtype": str(dtype), "backend": backend or "python_ref",
        "gflop": round(flops / 1e9, 1), "gflops_per_s": round(flops / median / 1e9, 1),
        "peak_mib_above_model": round(mem.peak / 2 ** 20),
        "python_ref_float32_median_s": round(ref_median, 3), "speedup_vs_python_ref": round(ref_median / median, 2),
        # python_ref's own peak moves between runs (370-613 MiB for one encode), so the ratio is of the same run
        "python_ref_float32_peak_mib": round(ref_peak / 2 ** 20), "peak_vs_python_ref": round(mem.peak / ref_peak, 2),
        "conv_ceiling_gflop_per_s": conv_ceiling(dtype),
    })
