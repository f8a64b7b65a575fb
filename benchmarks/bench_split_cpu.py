"""A decode and an encode split over 2 processes by bands of rows (``group=``, gloo) against one process, on CPU.

    python benchmarks/bench_split_cpu.py [--size 17x256x256] [--rounds 3] [--dtype float32]

Full-size Wan2.1 with random weights (the released configuration). One process with 2 threads (this one) against 2
processes with 1 thread each (spawned once, kept for every round), in the same run: each round runs the single
process's call, then the split call (the ranks start it together after a barrier; its time is the slower rank's).
A warm-up round first (weights prepared, oneDNN primitives made). Reported: medians of the rounds, the ratio, and per
rank where the split call's time went: the halo rows (their copies, the exchange and the wait for the neighbour) and
the gathers (the attention's keys and values, and the output), the rest being the band's own compute; and the peak
resident memory above the loaded model (PeakRSS) of the single process and of each rank.
"""
from __future__ import annotations

import argparse
import datetime
import os
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

CPU = torch.device("cpu")
SCALE = (0.0, 1.0)


def _model(dtype):
    torch.manual_seed(0)
    return WanVAEModel(**MODELS["wan2.1"].released).to(dtype).eval().requires_grad_(False)


def _inputs(size, dtype):
    t, h, w = size
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 1 + (t - 1) // 4, h // 8, w // 8, generator=gen).to(dtype)
    x = (torch.rand(1, 3, t, h, w, generator=gen) * 2 - 1).to(dtype)
    return {"decode": z, "encode": x}


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


def _worker(rank, world, store, size, dtype, jobs, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    spent = {"halo": 0.0, "gather": 0.0}
    Bands.halo = _timed(Bands.halo, spent, "halo")
    Bands.gather_rows = _timed(Bands.gather_rows, spent, "gather")
    model, inputs = _model(dtype), _inputs(size, dtype)
    while (kind := jobs.get()) is not None:
        spent.update(halo=0.0, gather=0.0)
        dist.barrier()
        with PeakRSS(CPU) as mem:
            start = time.perf_counter()
            _call(model, kind, inputs, group=dist.group.WORLD)
            seconds = time.perf_counter() - start
        results.put((rank, seconds, dict(spent), mem.peak))
    dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="17x256x256", help="TxHxW of the video")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    dtype = getattr(torch, args.dtype)
    world = 2
    torch.set_num_threads(world)
    ctx = mp.get_context("spawn")
    jobs, results = [ctx.Queue() for _ in range(world)], ctx.Queue()
    store = os.path.join(tempfile.mkdtemp(), "store")
    procs = [ctx.Process(target=_worker, args=(r, world, store, size, dtype, jobs[r], results)) for r in range(world)]
    for proc in procs:
        proc.start()
    model, inputs = _model(dtype), _inputs(size, dtype)
    rows = {kind: [] for kind in ("decode", "encode")}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for kind in rows:
                with PeakRSS(CPU) as mem:
                    start = time.perf_counter()
                    _call(model, kind, inputs)
                    single = time.perf_counter() - start
                for q in jobs:
                    q.put(kind)
                ranks = sorted(results.get(timeout=1200) for _ in range(world))
                if round_:
                    rows[kind].append((single, mem.peak, ranks))
    finally:
        for q in jobs:
            q.put(None)
        for proc in procs:
            proc.join(60)
    print(f"Wan2.1 full size, {args.dtype}, {'x'.join(map(str, size))}, {args.rounds} rounds (medians); "
          f"{os.cpu_count()} CPUs")
    for kind, got in rows.items():
        single = statistics.median(r[0] for r in got)
        split = statistics.median(max(rank[1] for rank in r[2]) for r in got)
        print(f"{kind}: 1 process x 2 threads {single:.2f} s, peak {max(r[1] for r in got) / 2 ** 20:.0f} MiB; "
              f"2 processes x 1 thread {split:.2f} s: {single / split:.2f}x")
        for rank in range(world):
            total = statistics.median(r[2][rank][1] for r in got)
            halo = statistics.median(r[2][rank][2]["halo"] for r in got)
            gather = statistics.median(r[2][rank][2]["gather"] for r in got)
            peak = max(r[2][rank][3] for r in got)
            print(f"  rank {rank}: {total:.2f} s = compute {total - halo - gather:.2f} + halo rows {halo:.2f} + "
                  f"gathers {gather:.2f}; peak {peak / 2 ** 20:.0f} MiB "
                  f"({peak / max(r[1] for r in got):.2f}x the single process's)")


if __name__ == "__main__":
    main()
