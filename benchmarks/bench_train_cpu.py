"""A training step on CPU: full-size Wan2.1's decode forward and the backward of an L1 loss, the fast model (with
per-chunk checkpointing, the default for a clip of several chunks, also at one latent frame per chunk, and without)
against python_ref's autograd,
side by side in one run: median time and peak memory above the loaded model, with their ratios to python_ref's.

    python -m pytest benchmarks/bench_train_cpu.py

Random released-size weights (dim=96, z=16), every decoder parameter requiring grad, a random latent of a 17 x 64 x
64 clip (5 x 8 x 8) and a random target video; gradients are set to None after each step (their memory is the same
in every case and counts in none). Times are measured side by side in the benchmark's process, a python_ref step
before each of a case's rounds (its ratio is to those: pedantic_median_beside); each peak in a fresh process of its
own (this file run as a script: the model, a warm-up step, then the measured step), since resident memory in a
process that ran other cases first carries their leftovers (glibc arenas, oneDNN scratch): measured in one shared
process, the checkpointed step's peak read 1350-1407 MiB, in its own 914-1069.
"""
import subprocess
import sys

import pytest
import torch

import python_ref
from conftest import pedantic_median_beside
from vaekernels import WanVAEModel, use_backend
from vaekernels.demo import PeakRSS
from vaekernels.models import MODELS

ROUNDS = 3
SIZES = [(17, 64, 64)]
SCALE = (0.0, 1.0)
# name -> (model, the fast model's decode options: checkpoint, chunk_frames (None: the default budget's))
IMPLS = {"python_ref-float32": ("ref", None, None), "fast-float32-checkpoint": ("fast", True, None),
         "fast-float32-checkpoint-chunk1": ("fast", True, 1), "fast-float32-no-checkpoint": ("fast", False, None)}

_models, _ref_peaks = {}, {}


def _get(kind):
    if not _models:
        torch.manual_seed(0)
        fast = WanVAEModel(**MODELS["wan2.1"].released)
        ref = python_ref.WanVAE_(**MODELS["wan2.1"].released)
        ref.load_state_dict(fast.state_dict())
        for model in (fast, ref):
            model.requires_grad_(False)
            model.decoder.requires_grad_(True)
        _models.update(fast=fast, ref=ref)
    return _models[kind]


def _inputs(size):
    t, h, w = size
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 1 + (t - 1) // 4, h // 8, w // 8, generator=gen)
    return z, torch.rand(1, 3, t, h, w, generator=gen) * 2 - 1


def _step(kind, checkpoint, chunk_frames, z, target):
    model = _get(kind)

    def step():
        video = model.decode(z, SCALE) if kind == "ref" else \
            model.decode(z, SCALE, checkpoint=checkpoint, chunk_frames=chunk_frames)
        (video - target).abs().mean().backward()
        for p in model.decoder.parameters():
            p.grad = None
    return step


def _peak(impl, size):
    """The peak resident memory of one step of ``impl`` above the level before it, in a fresh process (bytes)."""
    kind, checkpoint, chunk_frames = IMPLS[impl]
    step = _step(kind, checkpoint, chunk_frames, *_inputs(size))
    with use_backend("auto"):
        step()  # warm-up outside the memory window: oneDNN kernels, prepared weights
        with PeakRSS(torch.device("cpu")) as mem:
            step()
    return mem.peak


def _peak_in_fresh_process(impl, size):
    done = subprocess.run([sys.executable, __file__, impl, "x".join(map(str, size))], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split()[-1])


def _ref_peak(size):
    """python_ref's peak, measured once per size (in a fresh process, as the cases measure theirs)."""
    if size not in _ref_peaks:
        _ref_peaks[size] = _peak_in_fresh_process("python_ref-float32", size)
    return _ref_peaks[size]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_training_step(benchmark, size, impl):
    kind, checkpoint, chunk_frames = IMPLS[impl]
    step = _step(kind, checkpoint, chunk_frames, *_inputs(size))
    benchmark.group = f"wan2.1 decode training step {'x'.join(map(str, size))}"
    with use_backend("auto"):  # python_ref's ops are plain torch whatever the backend
        median, ref_median = pedantic_median_beside(benchmark, step, _step("ref", None, None, *_inputs(size)),
                                                    rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if median is None:
        return
    peak, ref_peak = _peak_in_fresh_process(impl, size), _ref_peak(size)
    benchmark.extra_info.update({
        "clip": "x".join(map(str, size)), "dtype": "torch.float32", "checkpoint": checkpoint, "chunk_frames": chunk_frames,
        "peak_mib_above_model": round(peak / 2 ** 20),
        "python_ref_median_s": round(ref_median, 3), "speedup_vs_python_ref": round(ref_median / median, 2),
        "python_ref_peak_mib": round(ref_peak / 2 ** 20), "peak_vs_python_ref": round(peak / ref_peak, 2),
    })


if __name__ == "__main__":  # one peak measurement: python bench_train_cpu.py IMPL TxHxW
    print(_peak(sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x"))))
