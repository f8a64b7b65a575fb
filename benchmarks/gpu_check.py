"""The one-command GPU check (``make gpu-check``): on one CUDA GPU, in about 8 minutes, in three steps that each
leave their results under $OUT (default /tmp/vaekernels_gpu):

1. tests: the op and Triton kernel tests on CUDA with the compiled kernels (tests/conftest.py makes their tensors
   on CUDA wherever it exists), ``tests.xml``;
2. parity: Wan2.1 at 480x832x81 (``--frames``, ``--size`` to change), encode then decode of one clip with random
   weights, FastWanVAE in float32 and bfloat16 against python_ref in float32 with TF32 off (the truth), and
   python_ref in bfloat16 against it too (the error a bf16 user already accepts), ``parity.json``;
3. timing: ``benchmarks/bench_gpu.py``'s whole-model cases (encode and decode, both families, 480x832 and
   720x1280, FastWanVAE against python_ref side by side: medians, peak memory, TFLOP/s), ``bench.json``.

Then one table of everything is printed. A step that fails is reported and the next one still runs; the exit
status is 1 if any failed. ``--smoke`` runs step 2 on CPU at a tiny size (checks this script, not a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _step(name, argv, budget_s, results):
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, timeout=budget_s)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"stopped after {budget_s} s"
    results.append((name, status, time.perf_counter() - start))
    return status == "passed"


def parity(size, frames, device, out):
    """Max |error| / max |truth| of FastWanVAE fp32 and bf16, and of python_ref bf16, against python_ref fp32 with
    TF32 off, for the latent and the decoded video."""
    import torch

    import python_ref
    from vaekernels import FastWanVAE

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    h, w = size
    torch.manual_seed(0)
    video = torch.rand(3, frames, h, w, device=device) * 2 - 1
    truth = python_ref.WanVAE(vae_pth=None, dtype=torch.float32, device=device)
    weights = truth.model.state_dict()
    with torch.no_grad():
        z_true = truth.encode([video])[0]
        x_true = truth.decode([z_true])[0]
    rows = {}
    for name, make in (("FastWanVAE float32", lambda: FastWanVAE(vae_pth=weights, dtype=torch.float32, device=device)),
                       ("FastWanVAE bfloat16", lambda: FastWanVAE(vae_pth=weights, dtype=torch.bfloat16,
                                                                  device=device)),
                       ("python_ref bfloat16", lambda: _ref_bf16(weights, device))):
        vae = make()
        # the warm-up compiles every Triton variant of this frame size: what the first call of a user pays
        warm = vae.warm_up(h, w) if hasattr(vae, "warm_up") else float("nan")
        start = time.perf_counter()
        with torch.no_grad():
            z = vae.encode([video])[0]
            x = vae.decode([z_true])[0]  # the same latent as the truth's decode: errors do not compound
        if device == "cuda":
            torch.cuda.synchronize()
        rows[name] = {"latent": ((z.float() - z_true).abs().max() / z_true.abs().max()).item(),
                      "video": ((x.float() - x_true).abs().max() / x_true.abs().max()).item(),
                      "warm-up seconds": warm, "seconds (after the warm-up)": time.perf_counter() - start}
        del vae
    Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def _ref_bf16(weights, device):
    import torch

    import python_ref
    ref = python_ref.WanVAE(vae_pth=None, dtype=torch.bfloat16, device=device)
    ref.model.load_state_dict(weights)
    return ref


def _table(results, parity_rows, bench):
    print("\n| step | result | seconds |\n|---|---|---|")
    for name, status, seconds in results:
        print(f"| {name} | {status} | {seconds:.0f} |")
    if parity_rows:
        print("\n| parity vs python_ref fp32, TF32 off | latent (max err / max) | video | warm-up s | encode+decode s |\n"
              "|---|---|---|---|---|")
        for name, row in parity_rows.items():
            print(f"| {name} | {row['latent']:.2e} | {row['video']:.2e} | {row['warm-up seconds']:.1f} | "
                  f"{row['seconds (after the warm-up)']:.1f} |")
    if bench:
        print("\n| case | FastWanVAE median | python_ref median | speedup | TFLOP/s | peak GiB (ours / ref) |\n"
              "|---|---|---|---|---|---|")
        for b in bench.get("benchmarks", []):
            e = b["extra_info"]
            print(f"| {b['name']} | {b['stats']['median'] * 1e3:.0f} ms | {e['ref_median_ms']:.0f} ms | "
                  f"{e['speedup']:.2f}x | {e['tflops']:.0f} | {e['peak_gib']:.1f} / {e['ref_peak_gib']:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="480x832", help="HxW of the parity clip")
    p.add_argument("--frames", type=int, default=81, help="frames of the parity clip")
    p.add_argument("--smoke", action="store_true", help="step 2 only, on CPU at 32x48x5")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or "/tmp/vaekernels_gpu")
    out.mkdir(parents=True, exist_ok=True)
    results, parity_rows, bench = [], None, None
    if args.smoke:
        size, frames, device = (32, 48), 5, "cpu"
    else:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --smoke to check the script on CPU)", file=sys.stderr)
            return 2
        size, frames, device = tuple(int(v) for v in args.size.split("x")), args.frames, "cuda"
        print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        _step("tests (ops and Triton kernels on CUDA)",
              [sys.executable, "-m", "pytest", "-q", "-x", "tests/ops", "tests/backends/test_triton_internals.py",
               "-k", "triton", f"--junitxml={out / 'tests.xml'}"], 240, results)
    start = time.perf_counter()
    try:
        parity_rows = parity(size, frames, device, out / "parity.json")
        results.append((f"parity {size[0]}x{size[1]}x{frames}", "passed", time.perf_counter() - start))
    except Exception as e:  # reported in the table; the timing step still runs
        results.append((f"parity {size[0]}x{size[1]}x{frames}", f"failed: {type(e).__name__}: {e}",
                        time.perf_counter() - start))
    if not args.smoke:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        _step("timing (benchmarks/bench_gpu.py, whole models)",
              [sys.executable, "-m", "pytest", "-q", "benchmarks/bench_gpu.py", "-k", "encode or decode",
               f"--benchmark-json={out / 'bench.json'}"], 300, results)
        if (out / "bench.json").exists():
            bench = json.loads((out / "bench.json").read_text())
    _table(results, parity_rows, bench)
    return 0 if all(status == "passed" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
