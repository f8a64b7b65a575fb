"""A decode and an encode split over several processes by bands of rows (``group=``) against one process: on CPU
(gloo) or on CUDA GPUs (NCCL, one GPU per rank).

    python benchmarks/bench_split.py [--size 17x256x256] [--rounds 3] [--dtype float32]      # CPU, 2 processes
    python benchmarks/bench_split.py --device cuda --world 2 --size 81x480x832 --dtype bfloat16  # 2+ GPUs

Full-size Wan2.1 with random weights (the released configuration). On CPU one process with ``world`` threads (this
one) against ``world`` processes with 1 thread each; on CUDA one GPU (this process, on GPU 0) against ``world`` GPUs.
The ranks are spawned once and kept for every round; each round runs the single process's call, then the split call
(the ranks start it together after a barrier; its time is the slower rank's).
A warm-up round first (weights prepared, oneDNN primitives made). Reported: medians of the rounds, the ratio, and per
rank where the split call's time went: the border rows (their exchange with the neighbours, the wait for them included)
and the gathers (the attention's keys and values, and the output), the rest being the band's own compute; and the peak
memory above the loaded model (PeakRSS: resident memory on CPU, the allocator's on CUDA) of the single process and
of each rank. The CUDA case has not run yet (no GPU here).
"""
from __future__ import annotations

import argparse
import datetime
import os
import queue
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vaekernels import WanVAEModel
from vaekernels.demo import PeakRSS
from vaekernels.layers.bands import Bands
from vaekernels.models import MODELS

SCALE = (0.0, 1.0)


def _model(dtype, device):
    torch.manual_seed(0)
    return WanVAEModel(**MODELS["wan2.1"].released).to(device=device, dtype=dtype).eval().requires_grad_(False)


def _inputs(size, dtype, device):
    t, h, w = size
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 1 + (t - 1) // 4, h // 8, w // 8, generator=gen).to(device=device, dtype=dtype)
    x = (torch.rand(1, 3, t, h, w, generator=gen) * 2 - 1).to(device=device, dtype=dtype)
    return {"decode": z, "encode": x}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call(model, kind, inputs, **split):
    if kind == "decode":
        return model.decode(inputs[kind], SCALE, **split)
    return model.encode(inputs[kind], SCALE, **split)


def _timed(method, spent, key):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
    return run


def _worker(rank, world, store, size, dtype, kind, jobs, results):
    device = torch.device(kind, rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=dist.FileStore(store, world), rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    spent = {"border": 0.0, "gather": 0.0}
    Bands.refresh = _timed(Bands.refresh, spent, "border")
    Bands.gather_rows = _timed(Bands.gather_rows, spent, "gather")
    model, inputs = _model(dtype, device), _inputs(size, dtype, device)
    while (call := jobs.get()) is not None:
        spent.update(border=0.0, gather=0.0)
        dist.barrier()
        with PeakRSS(device) as mem:
            start = time.perf_counter()
            _call(model, call, inputs, group=dist.group.WORLD)
            _sync(device)
            seconds = time.perf_counter() - start
        results.put((rank, seconds, dict(spent), mem.peak))
    dist.destroy_process_group()


def _result(results, procs):
    while True:
        try:
            return results.get(timeout=5)
        except queue.Empty:
            if not all(proc.is_alive() for proc in procs):
                raise RuntimeError("a rank died (its traceback is above)") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="17x256x256", help="TxHxW of the video")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--world", type=int, default=2, help="processes (on CUDA: GPUs) of the split")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    dtype, world = getattr(torch, args.dtype), args.world
    if args.device == "cuda" and torch.cuda.device_count() < world:
        p.error(f"--world {world} needs {world} GPUs; {torch.cuda.device_count()} found")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    torch.set_num_threads(world)
    ctx = mp.get_context("spawn")
    jobs, results = [ctx.Queue() for _ in range(world)], ctx.Queue()
    store = os.path.join(tempfile.mkdtemp(), "store")
    procs = [ctx.Process(target=_worker, args=(r, world, store, size, dtype, args.device, jobs[r], results))
             for r in range(world)]
    for proc in procs:
        proc.start()
    model, inputs = _model(dtype, device), _inputs(size, dtype, device)
    rows = {kind: [] for kind in ("decode", "encode")}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for kind in rows:
                with PeakRSS(device) as mem:
                    start = time.perf_counter()
                    _call(model, kind, inputs)
                    _sync(device)
                    single = time.perf_counter() - start
                for q in jobs:
                    q.put(kind)
                ranks = sorted(_result(results, procs) for _ in range(world))
                if round_:
                    rows[kind].append((single, mem.peak, ranks))
    finally:
        for q in jobs:
            q.put(None)
        for proc in procs:
            proc.join(60)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    one, many = (("1 GPU", f"{world} GPUs") if args.device == "cuda" else
                 (f"1 process x {world} threads", f"{world} processes x 1 thread"))
    print(f"Wan2.1 full size, {args.dtype}, {'x'.join(map(str, size))}, {args.rounds} rounds (medians); {where}")
    for kind, got in rows.items():
        single = statistics.median(r[0] for r in got)
        split = statistics.median(max(rank[1] for rank in r[2]) for r in got)
        print(f"{kind}: {one} {single:.2f} s, peak {max(r[1] for r in got) / 2 ** 20:.0f} MiB; {many} {split:.2f} s: "
              f"{single / split:.2f}x")
        for rank in range(world):
            total = statistics.median(r[2][rank][1] for r in got)
            border = statistics.median(r[2][rank][2]["border"] for r in got)
            gather = statistics.median(r[2][rank][2]["gather"] for r in got)
            peak = max(r[2][rank][3] for r in got)
            print(f"  rank {rank}: {total:.2f} s = compute {total - border - gather:.2f} + border rows {border:.2f} + "
                  f"gathers {gather:.2f}; peak {peak / 2 ** 20:.0f} MiB "
                  f"({peak / max(r[1] for r in got):.2f}x the single process's)")


if __name__ == "__main__":
    main()
