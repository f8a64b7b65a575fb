"""Measures the engine's transient memory on this CPU and fits the coefficients of ``engine.estimate_memory``.

    python benchmarks/memory_model.py measure OUT.jsonl [--families wan2.1 wan2.2] [--dtypes bfloat16 float32]
    python benchmarks/memory_model.py fit OUT.jsonl

``measure`` runs each released model (random weights, the default backend) on 17-frame clips at two sizes, encode
with several chunk lengths and decode with several chunk and piece lengths, and records the peak resident memory
each call adds above the loaded model (after a first call has prepared the weights): one JSON line per call, with
the sizes the estimate is written in (the largest per-frame activation, the output); each call runs once before it
is measured, since the kernels may prepare weights for a chunking's new shapes (kept for later calls, like the first
call's, and not part of the estimate). Each row names the kernel path its convs took (``backends.memory_path``:
bf16 on AMX apart). ``fit`` solves, per family, path and direction, for the coefficients of those sizes (least
squares, then raised until no measurement is above its estimate) and prints them with every measurement's
estimate/measured ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from vaekernels import engine
from vaekernels.backends import memory_path
from vaekernels.demo import PeakRSS
from vaekernels.models import MODELS, build

SIZES = [(128, 128), (192, 192)]
ENCODE_CHUNKS = [1, 2, 4, 8]  # video frames per chunk
DECODE_CASES = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 4), (2, 8)]  # (latent frames per chunk, output frames per piece)


def _peak(fn):
    fn()  # a new chunking can make the kernels prepare weights for its shapes (kept, like the first call's)
    with PeakRSS(torch.device("cpu")) as mem:
        fn()
    return mem.peak


def measure(families, dtypes, out):
    for name in families:
        entry = MODELS[name]
        for dtype in dtypes:
            torch.manual_seed(0)
            model = build(entry, entry.released).to(dtype).eval().requires_grad_(False)
            scale = [0.0, 1.0]
            path = memory_path(torch.empty(0, dtype=dtype))
            for h, w in SIZES:
                x = torch.randn(1, model.spec.video_channels, 17, h, w, dtype=dtype).clamp_(-1, 1)
                z = torch.randn(1, model.z_dim, 5, *model.latent_size(h, w), dtype=dtype)
                model.encode(x[:, :, :5], scale, chunk_frames=4)  # weights prepared, pools warmed
                model.decode(z[:, :, :2], scale, chunk_frames=1)
                terms = engine.memory_terms(model, "encode", x.shape, dtype)
                for chunk in ENCODE_CHUNKS:
                    peak = _peak(lambda: model.encode(x, scale, chunk_frames=chunk))
                    row = dict(family=name, path=path, dtype=str(dtype), kind="encode", h=h, w=w, chunk=chunk,
                               piece=None, peak=peak, **terms)
                    print(json.dumps(row), file=out, flush=True)
                terms = engine.memory_terms(model, "decode", z.shape, dtype)
                terms["input_bytes"] = z.numel() * z.element_size()  # decode un-normalises a copy of the latent
                for chunk, piece in DECODE_CASES:
                    os.environ["VAEKERNELS_CHUNK_MB"] = str(piece * terms["frame_bytes"] / 2 ** 20)
                    try:
                        peak = _peak(lambda: model.decode(z, scale, chunk_frames=chunk))
                    finally:
                        del os.environ["VAEKERNELS_CHUNK_MB"]
                    row = dict(family=name, path=path, dtype=str(dtype), kind="decode", h=h, w=w, chunk=chunk,
                               piece=piece, peak=peak, **terms)
                    print(json.dumps(row), file=out, flush=True)


def fit(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["family"], r.get("path", "default"), r["kind"]), []).append(r)
    for (family, path, kind), rs in sorted(groups.items()):
        # what is left after the output (and the decoder's un-normalised latent) against engine.memory_features:
        # least squares relative to each peak, then all coefficients raised by one factor until no measurement is
        # above its estimate
        feats = torch.tensor([engine.memory_features(kind, r["chunk"], r["piece"], r) for r in rs], dtype=torch.float64)
        fixed = torch.tensor([r["output_bytes"] + r.get("input_bytes", 0) for r in rs], dtype=torch.float64)
        peak = torch.tensor([r["peak"] for r in rs], dtype=torch.float64)
        coef = torch.linalg.lstsq(feats / peak[:, None], ((peak - fixed) / peak)[:, None]).solution.squeeze(1)
        coef = coef.clamp_min(0)
        coef *= ((peak - fixed) / (feats @ coef)).max()
        print(f"{family} {path} {kind}: coefficients ({', '.join(f'{c:.2f}' for c in coef.tolist())})")
        for r, est in zip(rs, (fixed + feats @ coef).tolist()):
            print(f"  {r['dtype']:>14} {r['h']}x{r['w']} chunk {r['chunk']} piece {r['piece']}: measured "
                  f"{r['peak'] / 2 ** 20:7.1f} MiB, estimate {est / 2 ** 20:7.1f} MiB ({est / r['peak']:.2f}x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("out")
    m.add_argument("--families", nargs="+", default=list(MODELS))
    m.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    f = sub.add_parser("fit")
    f.add_argument("rows")
    args = p.parse_args(argv)
    if args.command == "measure":
        with open(args.out, "a") as out:
            measure(args.families, [getattr(torch, d) for d in args.dtypes], out)
    else:
        with open(args.rows) as f:
            fit([json.loads(line) for line in f if line.strip()])


if __name__ == "__main__":
    sys.exit(main())
