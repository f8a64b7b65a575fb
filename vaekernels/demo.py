"""The demo (``python -m vaekernels demo``): a fast wrapper (Wan2.1's FastWanVAE or Wan2.2's Wan2_2_VAE) against
the plain reference of the same family on a synthetic clip, plus the clip and memory helpers the benchmarks share.

The demo is the one place that imports ``python_ref`` (installed beside the package): the
comparison is its purpose. The library itself never does.
"""
from __future__ import annotations

import gc
import math
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from .backends import backend_name
from .engine import trim_cpu_heap
from .models import detect, load_state_dict
from .wrappers.loader import WRAPPERS

# A small Wan2.1-architecture VAE trained on random_clips by examples/train_vae.py (how: the file's "made_by"
# metadata), so that the demo's strip shows a reconstruction, not noise
DEMO_WEIGHTS = Path(__file__).parent / "data" / "wan21_demo.safetensors"


def moving_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A ``[3,T,H,W]`` clip in [-1, 1]: the whole of one scene of ``random_clips``, drawn from ``seed``."""
    return random_clips(1, frames, height, width, torch.Generator().manual_seed(seed))[0]


def random_clips(count: int, frames: int, height: int, width: int,
                 generator: Optional[torch.Generator] = None, canvas: Optional[int] = None) -> torch.Tensor:
    """``[count, 3, T, H, W]`` clips in [-1, 1]: windows of ``height x width`` pixels at random places in moving
    scenes drawn on ``canvas x canvas`` pixels (default: the window is the whole scene).

    A scene spans [-1, 1] on each axis: a drifting colour gradient under a slow colour wave, two discs of random
    colour and size moving in straight lines, and a bar turning about a point; edges are anti-aliased (coverage
    of a pixel), so that the scene looks the same at any resolution. Motion is per frame (a disc crosses at most
    1.5 scene widths in 16 frames), so a short clip is the start of a longer one: a model trained on windows of
    short clips of a ``canvas``-pixel scene has seen what a whole long clip of it shows, frame to frame."""
    canvas = canvas or max(height, width)
    if canvas < max(height, width):
        raise ValueError(f"canvas must be at least the window's height and width ({height}x{width}), got {canvas}")
    pixel = 2.0 / (canvas - 1) if canvas > 1 else 2.0

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(count, *shape, generator=generator)

    def coverage(inside):  # signed distance to an edge (inside > 0) -> the part of a pixel covered
        return (inside / pixel + 0.5).clamp(0, 1)

    def offsets(size):
        return torch.randint(canvas - size + 1, (count, 1, 1, 1), generator=generator)

    t = torch.arange(frames, dtype=torch.float32).view(1, -1, 1, 1) / 16
    y = -1 + pixel * (offsets(height) + torch.arange(height).view(1, 1, -1, 1))  # [count, 1, H, 1]
    x = -1 + pixel * (offsets(width) + torch.arange(width).view(1, 1, 1, -1))  # [count, 1, 1, W]

    def per_clip(v):  # [count] -> [count, 1, 1, 1]
        return v.view(count, 1, 1, 1)

    angle, drift = uniform(low=0.0, high=2 * math.pi), uniform()
    ramp = per_clip(angle.cos()) * x + per_clip(angle.sin()) * y + per_clip(drift) * t  # [count, T, H, W]
    low, high = uniform(3, 1, 1, 1), uniform(3, 1, 1, 1)
    clip = low + (high - low) * (0.5 + 0.25 * ramp.unsqueeze(1))  # [count, 3, T, H, W]
    direction, cycles = uniform(low=0.0, high=2 * math.pi), uniform(low=0.5, high=1.5)
    phase = per_clip(direction.cos()) * x + per_clip(direction.sin()) * y
    wave = torch.sin(math.pi * per_clip(cycles) * phase + 2 * math.pi * t + per_clip(uniform(high=math.pi)))
    clip = clip + uniform(3, 1, 1, 1, low=-0.3, high=0.3) * wave.unsqueeze(1)
    for _ in range(2):
        cx = per_clip(uniform(low=-0.7, high=0.7)) + per_clip(uniform(low=-1.5, high=1.5)) * t
        cy = per_clip(uniform(low=-0.7, high=0.7)) + per_clip(uniform(low=-1.5, high=1.5)) * t
        radius = per_clip(uniform(low=0.15, high=0.4))
        disc = coverage(radius - ((x - cx) ** 2 + (y - cy) ** 2).sqrt()).unsqueeze(1)  # [count, 1, T, H, W]
        clip = clip * (1 - disc) + uniform(3, 1, 1, 1) * disc
    turn = per_clip(uniform(low=0.0, high=math.pi)) + per_clip(uniform(low=-1.0, high=1.0)) * math.pi * t
    dx = x - per_clip(uniform(low=-0.5, high=0.5))
    dy = y - per_clip(uniform(low=-0.5, high=0.5))
    across = (turn.cos() * dy - turn.sin() * dx).abs()
    bar = (coverage(0.06 - across) * coverage(0.6 - (dx ** 2 + dy ** 2).sqrt())).unsqueeze(1)
    clip = clip * (1 - bar) + uniform(3, 1, 1, 1) * bar
    return clip.clamp(-1, 1)


def _trim():
    gc.collect()
    trim_cpu_heap(torch.device("cpu"))


class PeakRSS:
    """Peak memory above the level at entry: resident memory on CPU, CUDA's own counter on CUDA.

    On CPU, heap pages freed by earlier work are first handed back to the OS (glibc's malloc_trim), so
    that memory the allocator kept from an earlier call does not hide this one's; then the kernel's
    high-water mark (VmHWM) is reset and read at exit. Where that reset is not allowed, resident memory
    is sampled every 5 ms instead.
    """

    def __init__(self, device):
        self.device, self.peak = device, 0

    @classmethod
    def resident(cls, device) -> int:
        """The memory held now, in bytes (on CPU after handing freed heap pages back, as at entry)."""
        if device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        _trim()
        return cls._status("VmRSS")

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._status("VmRSS") - self.base)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        _trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self._thread = None
        except OSError:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
        self.base = self._status("VmRSS")
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        elif self._thread is None:
            self.peak = self._status("VmHWM") - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._status("VmRSS") - self.base)
        return False


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two clips in [-1, 1] (peak-to-peak 2)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def run(vae, clip, label):
    """One first encode + decode: the latent, the video, their seconds, the peak memory above the level at the
    start and the memory the call left held (the weights the fast kernels prepare at a first call, kept for later
    calls; the outputs, a few MiB, count in it too)."""
    print(f"{label}: encode + decode ...", file=sys.stderr, flush=True)
    device = vae_device(vae)
    before = PeakRSS.resident(device)
    with PeakRSS(device) as mem:
        start = time.perf_counter()
        [z] = vae.encode([clip])
        t_enc = time.perf_counter() - start
        [video] = vae.decode([z])
        t_dec = time.perf_counter() - start - t_enc
    kept = max(0, PeakRSS.resident(device) - before)
    print(f"{label}: encode {t_enc:.2f} s, decode {t_dec:.2f} s", file=sys.stderr, flush=True)
    return z, video, t_enc, t_dec, mem.peak, kept


def vae_device(vae):
    return next(vae.model.parameters()).device


def save_strip(path: Path, rows, names, frames):
    """A PNG grid: one row per clip, the chosen frames side by side, each row labelled."""
    from PIL import Image, ImageDraw

    tiles = []
    for clip in rows:
        pick = [((clip[:, i].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for i in frames]
        tiles.append([Image.fromarray(p) for p in pick])
    h, w = tiles[0][0].height, tiles[0][0].width
    label_w = 90
    img = Image.new("RGB", (label_w + w * len(frames), h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for r, (row, name) in enumerate(zip(tiles, names)):
        draw.text((4, r * h + h // 2 - 6), name, fill="black")
        for c, tile in enumerate(row):
            img.paste(tile, (label_w + c * w, r * h))
    img.save(path)


def made_by_record(path) -> Optional[dict]:
    """The record examples/train_vae.py writes into a checkpoint's safetensors metadata ("made_by"): its arguments,
    steps done, recent loss, and the record of the run it went on from ("started_from"); None for other files."""
    if not str(path).endswith(".safetensors"):
        return None
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        made = (f.metadata() or {}).get("made_by")
    return None if made is None else json.loads(made)


def _made_by(path) -> Optional[str]:
    """How a checkpoint of examples/train_vae.py was made, in a line; None for others."""
    made = made_by_record(path)
    if made is None:
        return None

    def stages(m):  # a run that started from another's weights says so in "started_from"
        a = m["arguments"]
        run = (f"{m['steps_done']} steps on {a['frames']}x{a['size']}x{a['size']} windows of {a['canvas']}-pixel "
               f"scenes, batch {a['batch']} (loss {m['recent_loss']})")
        return stages(m["started_from"]) + [run] if "started_from" in m else [run]

    return f"trained by {made['script']}: " + ", then ".join(stages(made))


def demo(args):
    import python_ref

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    torch.manual_seed(args.seed)
    if args.weights and (args.random or args.model):
        raise ValueError("--weights reads the model from the checkpoint: give it without --random and --model")
    random = args.random or args.model is not None
    path = None if random else args.weights or DEMO_WEIGHTS
    if path == DEMO_WEIGHTS and not DEMO_WEIGHTS.exists():
        raise ValueError(f"the demo's trained weights are missing ({DEMO_WEIGHTS}: an install without the package's "
                         "data?); --random runs the full-size model with random weights")
    weights, family, extra, config, made_by = None, args.model or "wan2.1", {}, None, None
    if path:
        weights = load_state_dict(path)
        entry, config = detect(weights)  # the checkpoint says which model it is
        family, extra = entry.name, {"z_dim": config["z_dim"]}
        made_by = _made_by(path)
    print(f"building {family} ({'random weights' if random else f'weights {path}'}) on {device}",
          file=sys.stderr, flush=True)
    fast = WRAPPERS[family](vae_pth=weights, dtype=dtype, device=device, progress=True, **extra)
    ref = {"wan2.1": python_ref.WanVAE, "wan2.2": python_ref.Wan2_2_VAE}[family](vae_pth=None, dtype=dtype, device=device)
    if config is not None:  # the checkpoint's widths, which may not be the released ones
        module = {"wan2.1": python_ref.wan21_vae.WanVAE_, "wan2.2": python_ref.wan22_vae.WanVAE_}[family]
        ref.model = module(**config).to(device).eval().requires_grad_(False)
    ref.model.load_state_dict({k: v.float() for k, v in fast.model.state_dict().items()})
    name = type(fast).__name__
    clip = moving_clip(args.frames, args.height, args.width, args.seed).to(device)
    fast.model.check_video(clip.unsqueeze(0), "the demo clip (--frames, --height, --width)")  # before python_ref runs

    z_ref, v_ref, te_ref, td_ref, mem_ref, kept_ref = run(ref, clip, "python_ref")
    z_fast, v_fast, te_fast, td_fast, mem_fast, kept_fast = run(
        fast, clip, f"{name} ({backend_name('causal_conv3d', clip.to(dtype))} backend)")

    rows = [
        ("input clip", f"{list(clip.shape)}"),
        ("latent", f"{list(z_fast.shape)}"),
        ("latent max |fast - ref|", f"{(z_fast - z_ref).abs().max().item():.3e}"),
        ("video max |fast - ref|", f"{(v_fast - v_ref).abs().max().item():.3e}"),
        ("video PSNR fast vs ref", f"{psnr(v_fast, v_ref):.1f} dB"),
        ("time python_ref (enc + dec)", f"{te_ref:.2f} + {td_ref:.2f} = {te_ref + td_ref:.2f} s"),
        (f"time {name} (enc + dec)", f"{te_fast:.2f} + {td_fast:.2f} = {te_fast + td_fast:.2f} s"),
        ("speed-up", f"{(te_ref + td_ref) / (te_fast + td_fast):.2f}x"),
        ("reconstruction PSNR (fast)", f"{psnr(v_fast, clip[:, :v_fast.shape[1]]):.1f} dB against the input"
                                       + (" (random weights: noise)" if random else "")),
        ("reconstruction PSNR (ref)", f"{psnr(v_ref, clip[:, :v_ref.shape[1]]):.1f} dB"),
    ]
    for label, peak, kept in (("python_ref", mem_ref, kept_ref), (name, mem_fast, kept_fast)):
        # what the first call left held is mostly the fast kernels' prepared weights; the rest was transient
        rows.append((f"memory {label}", f"transient peak {max(0, peak - kept) / 2 ** 20:.0f} MiB, held after "
                                        f"the first call {kept / 2 ** 20:.0f} MiB (above the loaded model)"))
    rows.append(("note", f"one first call each: {name}'s time and held memory include preparing its weights once "
                         "(packed or Winograd-transformed copies kept for later calls); `make bench` measures later "
                         "calls"))
    cfg = fast.model.spec
    params = sum(p.numel() for p in fast.model.parameters())
    print(f"\n{family} VAE ({name}), z_dim={cfg.z_dim}, {cfg.time_factor}x{cfg.space_factor}x{cfg.space_factor} "
          f"compression, {params / 1e6:.1f}M parameters, {args.dtype}, {device}")
    if made_by:
        print(f"  weights: {made_by}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = v_fast.shape[1]
    frames = sorted({0, t // 4, t // 2, 3 * t // 4, t - 1})
    save_strip(out / "strip.png", [clip.cpu(), v_ref.cpu(), v_fast.cpu()], ["input", "python_ref", name], frames)
    print(f"  strip (input / python_ref / {name}, frames {frames}): {out / 'strip.png'}")
