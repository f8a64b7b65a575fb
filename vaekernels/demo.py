"""The demo (``python -m vaekernels demo``): a fast wrapper (Wan2.1's FastWanVAE or Wan2.2's Wan2_2_VAE) against
the plain reference of the same family on a synthetic clip, plus the clip and memory helpers the benchmarks share.

The demo is the one place that imports ``python_ref`` (installed beside the package): the
comparison is its purpose. The library itself never does.
"""
from __future__ import annotations

import ctypes
import gc
import math
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from .backends import backend_name
from .models import detect, load_state_dict
from .wrappers.loader import WRAPPERS


def moving_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """A ``[3,T,H,W]`` clip in [-1, 1]: a drifting colour gradient, a disc crossing it, a rotating bar."""
    t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.linspace(-1, 1, height).view(1, -1, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, -1)
    phase = t / max(frames, 1)
    r = torch.sin(3 * x + 2 * math.pi * phase) * 0.5
    g = torch.cos(2 * y - 2 * math.pi * phase) * 0.5
    b = (x * y) * 0.5
    cx, cy = -0.6 + 1.2 * phase, 0.3 * torch.sin(2 * math.pi * phase)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < 0.12).float()
    angle = math.pi * phase
    bar = ((torch.cos(angle) * y - torch.sin(angle) * x).abs() < 0.06).float() * ((x ** 2 + y ** 2) < 0.5).float()
    clip = torch.stack([r + 0.5 * disc - bar, g - 0.4 * disc + bar, b + 0.6 * disc - bar])
    return clip.clamp(-1, 1)


def random_clips(count: int, frames: int, height: int, width: int,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[count, 3, T, H, W]`` clips in [-1, 1] for training: each a colour gradient of random direction and
    colours, drifting, with two discs of random colour, size and straight-line motion across it and a thin bar of
    random colour turning about a random point."""
    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(count, *shape, 1, 1, 1, generator=generator)

    t = torch.linspace(0, 1, frames).view(1, -1, 1, 1)
    y = torch.linspace(-1, 1, height).view(1, 1, -1, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, 1, -1)
    angle = uniform(1, low=0.0, high=2 * math.pi)[:, 0]
    drift = uniform(1)[:, 0]
    ramp = torch.cos(angle) * x + torch.sin(angle) * y + drift * t  # [count, T, H, W]
    low, high = uniform(3)[..., 0], uniform(3)[..., 0]  # [count, 3, 1, 1]
    clip = low.unsqueeze(2) + (high - low).unsqueeze(2) * (0.5 + 0.25 * ramp.unsqueeze(1))
    for _ in range(2):
        start, velocity = uniform(2)[..., 0, 0, 0], uniform(2, low=-1.5, high=1.5)[..., 0, 0, 0]  # [count, 2]
        cx = (start[:, 0] + velocity[:, 0] * t.flatten()[:, None]).T.reshape(count, frames, 1, 1)
        cy = (start[:, 1] + velocity[:, 1] * t.flatten()[:, None]).T.reshape(count, frames, 1, 1)
        radius = uniform(1, low=0.15, high=0.4)[:, 0]
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < radius ** 2).float().unsqueeze(1)  # [count, 1, T, H, W]
        colour = uniform(3)[..., 0].unsqueeze(2)
        clip = clip * (1 - disc) + colour * disc
    centre, turn = uniform(2, low=-0.5, high=0.5)[..., 0, 0, 0], uniform(2, low=0.0, high=math.pi)[..., 0, 0, 0]
    angle = (turn[:, 0, None] + turn[:, 1, None] * t.flatten()[None]).reshape(count, frames, 1, 1)
    dx, dy = x - centre[:, 0].view(-1, 1, 1, 1), y - centre[:, 1].view(-1, 1, 1, 1)
    bar = (((torch.cos(angle) * dy - torch.sin(angle) * dx).abs() < 0.06) & (dx ** 2 + dy ** 2 < 0.4)).float()
    colour = uniform(3)[..., 0].unsqueeze(2)
    clip = clip * (1 - bar.unsqueeze(1)) + colour * bar.unsqueeze(1)
    return clip.clamp(-1, 1)


def _trim():
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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


def demo(args):
    import python_ref

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    torch.manual_seed(args.seed)
    weights, family, extra, config = None, args.model, {}, None
    if args.weights:
        weights = load_state_dict(args.weights)
        entry, config = detect(weights)  # the checkpoint says which model it is
        family, extra = entry.name, {"z_dim": config["z_dim"]}
    print(f"building {family} ({'weights ' + args.weights if args.weights else 'random weights'}) on {device}",
          file=sys.stderr, flush=True)
    fast = WRAPPERS[family](vae_pth=weights, dtype=dtype, device=device, progress=True, **extra)
    ref = {"wan2.1": python_ref.WanVAE, "wan2.2": python_ref.Wan2_2_VAE}[family](vae_pth=None, dtype=dtype, device=device)
    if config is not None:  # the checkpoint's widths, which may not be the released ones
        module = {"wan2.1": python_ref.wan21_vae.WanVAE_, "wan2.2": python_ref.wan22_vae.WanVAE_}[family]
        ref.model = module(**config).to(device).eval().requires_grad_(False)
    ref.model.load_state_dict({k: v.float() for k, v in fast.model.state_dict().items()})
    name = type(fast).__name__
    clip = moving_clip(args.frames, args.height, args.width).to(device)
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
                                       + ("" if args.weights else " (random weights: noise)")),
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
    print(f"\n{family} VAE ({name}), z_dim={cfg.z_dim}, {cfg.time_factor}x{cfg.space_factor}x{cfg.space_factor} "
          f"compression, {args.dtype}, {device}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = v_fast.shape[1]
    frames = sorted({0, t // 4, t // 2, 3 * t // 4, t - 1})
    save_strip(out / "strip.png", [clip.cpu(), v_ref.cpu(), v_fast.cpu()], ["input", "python_ref", name], frames)
    print(f"  strip (input / python_ref / {name}, frames {frames}): {out / 'strip.png'}")
