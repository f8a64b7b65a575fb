"""Encode and decode split over a process group by bands of rows (group=): several processes on this machine over
gloo, against one process and against the official code's float64 golden outputs.

Each test spawns its world of processes once and runs every case there (a process start costs seconds): the ranks
save what they computed, the test compares it here.
"""
import datetime
import os
import re
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import DATA, tiny_model
from vaekernels import FastWanVAE, Wan22VAEModel, WanVAEModel, use_backend
from vaekernels.layers.bands import PeerError

GOLDEN = {"wan2.1": (WanVAEModel, torch.load(DATA / "wan21_tiny_float64.pt", weights_only=True)),
          "wan2.2": (Wan22VAEModel, torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True))}
# golden cases with at least 3 latent rows (a band each at world size 3): (family, case)
GOLDEN_CASES = [("wan2.1", 2), ("wan2.1", 3), ("wan2.2", 3)]
# float32 cases on the default backends: (family, video shape, chunk_frames); 44 rows: 5 latent rows (uneven bands)
# and 4 rows past the last whole latent row in Wan2.1's bottom band
FLOAT32_CASES = [("wan2.1", (1, 3, 9, 44, 24), None), ("wan2.1", (2, 3, 5, 40, 16), 1),
                 ("wan2.2", (1, 3, 9, 80, 32), 2)]
SPAWN_TIMEOUT_S = 300
WRAPPER_CONFIG, WRAPPER_VIDEO = dict(dim=8), (3, 5, 32, 24)


def golden_model(family):
    cls, golden = GOLDEN[family]
    model = cls(**golden["config"]).double().eval().requires_grad_(False)
    model.load_state_dict({k: v.double() for k, v in golden["state_dict"].items()})
    return model, [golden["latents_mean"], 1.0 / golden["latents_std"]]


def float32_input(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _results(rank, world):
    """What each rank computes: {key: tensor}."""
    out = {}
    group = dist.group.WORLD
    for family, case in GOLDEN_CASES:
        model, scale = golden_model(family)
        c = GOLDEN[family][1]["cases"][case]
        with use_backend("torch"):  # float64 runs on the torch backend
            for chunk in (None, 1, 2):
                key = f"golden {family} {case} {chunk}"
                out[f"{key} log_var"] = model.encode_raw(c["video"], chunk_frames=chunk, group=group)[1]
                out[f"{key} mu"] = model.encode(c["video"], scale, chunk_frames=chunk, group=group)  # normalised
                out[f"{key} decoded"] = model.decode(c["z_random"], scale, chunk_frames=chunk, group=group)
    for i, (family, shape, chunk) in enumerate(FLOAT32_CASES):
        model = tiny_model(family)
        x = float32_input(shape, i)
        scale = (0.0, 1.0)
        z = model.encode(x, scale, chunk_frames=chunk, group=group)
        out[f"f32 {i} z"] = z
        out[f"f32 {i} video"] = model.decode(z, scale, chunk_frames=chunk, group=group)
        # each rank passes its band and keeps its band of the output
        rows = model.band_rows(shape[3], world)[rank]
        out[f"f32 {i} z band"] = model.encode(x[:, :, :, rows[0]:rows[1]], scale, chunk_frames=chunk, group=group,
                                              band_input=True, output="band")
        lat = model.band_rows(z.shape[3], world, latent=True)[rank]
        out[f"f32 {i} video to 0"] = model.decode(z[:, :, :, lat[0]:lat[1]], scale, chunk_frames=chunk,
                                                  group=group, band_input=True, output=0)
    # the drop-in wrapper with group=: lists in, whole lists out on every rank
    torch.manual_seed(0)
    vae = FastWanVAE(z_dim=4, vae_pth=None, device="cpu", config=WRAPPER_CONFIG, latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4, group=group, timeout=60)
    video = float32_input(WRAPPER_VIDEO, 7)
    out["wrapper z"] = vae.encode([video])[0]
    out["wrapper video"] = vae.decode([out["wrapper z"]])[0]
    return out


def _worker(rank, world, store, result_dir, task):
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=SPAWN_TIMEOUT_S))
        result = task(rank, world)
    except BaseException:
        result = {"error": traceback.format_exc()}
    torch.save(result, os.path.join(result_dir, f"{rank}.pt"))
    os._exit(0)  # no teardown: a rank that a test killed cannot take part in destroy_process_group


def spawn(world, task, tmp_path, lost=()):
    """Run ``task(rank, world)`` on ``world`` gloo processes; their results (a dict per rank, or its traceback; None
    for the ranks in ``lost``, which the task ends without one)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, str(tmp_path / "store"), str(tmp_path), task))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} rank(s) still running after {SPAWN_TIMEOUT_S} s"
    results = []
    for r in range(world):
        path = tmp_path / f"{r}.pt"
        assert path.exists() != (r in lost), f"rank {r} exited with code {procs[r].exitcode}"
        results.append(torch.load(path, weights_only=True) if r not in lost else None)
    return results


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("world", [2, 3])
def test_split_equals_one_process(world, tmp_path):
    results = spawn(world, _results, tmp_path)
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    for family, case in GOLDEN_CASES:
        c = GOLDEN[family][1]["cases"][case]
        for chunk in (None, 1, 2):
            for key, want in (("mu", c["mu"]), ("log_var", c["log_var"]), ("decoded", c["decoded_random"])):
                for r, res in enumerate(results):
                    # float64 throughout: the golden outputs and a band differ by summation order only (~1e-15)
                    assert rel_err(res[f"golden {family} {case} {chunk} {key}"], want) <= 1e-12, (family, case, key, r)
    for i, (family, shape, chunk) in enumerate(FLOAT32_CASES):
        model = tiny_model(family)
        x = float32_input(shape, i)
        z = model.encode(x, (0.0, 1.0), chunk_frames=chunk)
        video = model.decode(z, (0.0, 1.0), chunk_frames=chunk)
        for r, res in enumerate(results):
            # the same kernels on frames of another height: float32 rounding of a few hundred products per output
            # apart (tiles of the Winograd convs fall elsewhere), far under 1e-5 of the largest value
            assert rel_err(res[f"f32 {i} z"], z) <= 1e-5, (i, r)
            assert rel_err(res[f"f32 {i} video"], video) <= 1e-5, (i, r)
            lat = model.band_rows(z.shape[3], world, latent=True)[r]
            assert rel_err(res[f"f32 {i} z band"], z[:, :, :, lat[0]:lat[1]]) <= 1e-5, (i, r)
            if r == 0:
                assert rel_err(res[f"f32 {i} video to 0"], video) <= 1e-5
            else:
                assert res[f"f32 {i} video to 0"] is None
    torch.manual_seed(0)  # the wrapper's random weights, as on the ranks (built there after the same seed)
    vae = FastWanVAE(z_dim=4, vae_pth=None, device="cpu", config=WRAPPER_CONFIG, latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4)
    z = vae.encode([float32_input(WRAPPER_VIDEO, 7)])[0]
    video = vae.decode([z])[0]
    for res in results:
        assert rel_err(res["wrapper z"], z) <= 1e-5 and rel_err(res["wrapper video"], video) <= 1e-5


def _errors(rank, world):
    """Calls that cannot be split as asked, then a decode whose rank 1 dies after its first chunk: {case: (error type,
    message, seconds)} per rank."""
    out = {}
    group = dist.group.WORLD
    model = tiny_model("wan2.1")
    x = float32_input((1, 3, 5, 24, 16), 0)  # 3 latent rows

    def attempt(name, call):
        start = time.monotonic()
        try:
            call()
            out[name] = ("no error", "", 0.0)
        except Exception as e:
            out[name] = (type(e).__name__, str(e), time.monotonic() - start)

    attempt("frames differ", lambda: model.encode(x[:, :, :1 if rank == 1 else 5], (0.0, 1.0), group=group))
    attempt("heights differ", lambda: model.encode(x[:, :, :, :16 if rank == 2 else 24], (0.0, 1.0), group=group))
    attempt("wrong band", lambda: model.encode(x[:, :, :, :16 if rank else 8], (0.0, 1.0), group=group,
                                               band_input=True))
    attempt("too few rows", lambda: model.encode(x[:, :, :, :16], (0.0, 1.0), group=group))
    attempt("bad output", lambda: model.encode(x, (0.0, 1.0), group=group, output=world))
    attempt("bad timeout", lambda: model.encode(x, (0.0, 1.0), group=group, timeout=0))
    attempt("values differ", lambda: model.encode(x + (rank == 1), (0.0, 1.0), group=group))
    nan = x.clone()
    nan[0, 0, 0, 0, 0] = float("nan")
    attempt("NaN on rank 2", lambda: model.encode(nan if rank == 2 else x, (0.0, 1.0), group=group))
    z = torch.randn(1, 4, 4, 3, 2)

    def die(done, total):
        if rank == 1 and done == 1:
            os._exit(0)  # no result: the test expects none from rank 1

    attempt("rank 1 dies", lambda: model.decode(z, (0.0, 1.0), chunk_frames=1, group=group, timeout=5, progress=die))
    return out


def test_calls_that_cannot_be_split_and_a_dead_rank(tmp_path):
    """Every rank raises the same clear error before any work for a call that cannot be split as asked; when a rank
    dies in the middle of a decode, the others raise PeerError within the call's timeout instead of hanging."""
    results = spawn(3, _errors, tmp_path, lost=(1,))
    for r in (0, 2):
        res = results[r]
        assert "error" not in res, f"rank {r}:\n{res['error']}"
        for case, match in (("frames differ", "rank 1 passed shape \\(1, 3, 1, 24, 16\\)"),
                            ("heights differ", "must pass the whole input.*heights \\[24, 24, 16\\]"),
                            ("wrong band", "rank 0 passes rows \\(0, 16\\) of the 40.*it passed 8"),
                            ("too few rows", "2 latent rows cannot be split over 3 ranks"),
                            ("bad output", "output must be one of"), ("bad timeout", "timeout must be a positive"),
                            ("values differ", "the ranks' values differ")):
            kind, message, _ = res[case]
            assert kind == "ValueError" and re.search(match, message), (r, case, kind, message)
        # the rank whose own checks refuse its input raises its error; the others learn of it, before any work
        kind, message, _ = res["NaN on rank 2"]
        want = "x contains NaN" if r == 2 else "rank 2 of the split refused its input"
        assert kind == "ValueError" and want in message, (r, message)
        kind, message, seconds = res["rank 1 dies"]
        # gloo sees the closed connection at once; the bound is the call's timeout of 5 s (and slack for a busy CI)
        assert kind == "PeerError" and f"rank {r} of 3 waited 5 s" in message and seconds < 5 + 10, (r, message, seconds)


def _stall(rank, world):
    """Rank 1 stops answering for 8 s in the middle of a decode whose timeout is 2 s."""
    model = tiny_model("wan2.1")
    z = torch.randn(1, 4, 4, 3, 2)

    def stall(done, total):
        if rank == 1 and done == 1:
            time.sleep(8)
            os._exit(0)

    start = time.monotonic()
    try:
        model.decode(z, (0.0, 1.0), chunk_frames=1, group=dist.group.WORLD, timeout=2, progress=stall)
        return {"outcome": ("no error", "", 0.0)}
    except Exception as e:
        return {"outcome": (type(e).__name__, str(e), time.monotonic() - start)}


def test_a_stalled_rank_stops_the_others_within_the_timeout(tmp_path):
    results = spawn(2, _stall, tmp_path, lost=(1,))
    kind, message, seconds = results[0]["outcome"]
    assert kind == "PeerError" and "waited 2 s" in message, (kind, message)
    assert seconds < 2 + 4  # the timeout, and slack for a busy CI; the stall lasts 8 s


def test_split_options_need_a_group():
    model = tiny_model("wan2.1")
    x = float32_input((1, 3, 1, 16, 16), 0)
    for options in (dict(band_input=True), dict(output="band"), dict(timeout=5)):
        with pytest.raises(ValueError, match="options of a split call: pass group= too"):
            model.encode(x, (0.0, 1.0), **options)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match="torch.distributed is not initialised"):
            model.decode(torch.zeros(1, 4, 1, 2, 2), (0.0, 1.0), group=object())


MEMORY_CONFIG, MEMORY_VIDEO = dict(dim=32, z_dim=16), (1, 3, 9, 256, 256)


def _peaks(rank, world):
    """The transient peak (resident memory above the loaded model, PeakRSS) of a Wan2.1 encode and decode of
    MEMORY_VIDEO, each measured after a warm-up call (which prepares the weights)."""
    from vaekernels.demo import PeakRSS
    torch.manual_seed(0)
    model = WanVAEModel(**MEMORY_CONFIG).eval().requires_grad_(False)
    x = float32_input(MEMORY_VIDEO, 0)
    z = torch.randn(1, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    split = dict(group=dist.group.WORLD) if world > 1 else {}
    out = {}
    for kind, call in (("encode", lambda: model.encode(x, (0.0, 1.0), **split)),
                       ("decode", lambda: model.decode(z, (0.0, 1.0), **split))):
        call()
        with PeakRSS(torch.device("cpu")) as mem:
            call()
        out[kind] = torch.tensor(mem.peak)
    return out


def test_a_ranks_peak_at_world_size_2_is_at_most_0_6_of_one_process(tmp_path):
    """Each rank holds half the rows of every activation and runs the single process's chunking, so its transient peak
    is about half the single process's, plus what does not split (the whole output gathered on every rank, the
    exchange buffers). Both measured in fresh processes of one thread each (a process that ran other work first
    carries its leftovers)."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = spawn(1, _peaks, tmp_path / "one")[0]
    two = spawn(2, _peaks, tmp_path / "two")
    for res in [one] + two:
        assert "error" not in res, res.get("error")
    for kind in ("encode", "decode"):
        for r, res in enumerate(two):
            assert res[kind] <= 0.6 * one[kind], (kind, r, res[kind].item() / one[kind].item())
