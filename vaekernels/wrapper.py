"""``FastWanVAE``: a drop-in for upstream's ``WanVAE`` wrapper (same constructor, list in, list out)."""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

import torch

from .checkpoint import RELEASE_CONFIG, CheckpointError, check_keys, config_from_state_dict, load_state_dict
from .model import WanVAEModel

# Per-channel latent statistics of the released Wan2.1 VAE (z_dim = 16).
WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available here; pass device='cpu'")
    return device


class ProgressPrinter:
    """Prints ``label: done/total frames`` on one stderr line once a call has run longer than a second."""

    def __init__(self, label: str):
        self.label, self.start, self.shown = label, time.perf_counter(), False

    def __call__(self, done: int, total: int):
        elapsed = time.perf_counter() - self.start
        if elapsed > 1.0 or self.shown:
            self.shown = True
            end = "\n" if done == total else ""
            print(f"\r{self.label}: {done}/{total} frames, {elapsed:.1f} s", end=end, file=sys.stderr, flush=True)


class FastWanVAE:
    """Drop-in for upstream ``WanVAE(z_dim=16, vae_pth=..., dtype=torch.float, device="cuda")``.

    ``vae_pth=None`` builds random weights (for tests and benchmarks). ``dtype`` is the compute
    precision: float32 is the parity mode, bfloat16/float16 the fast modes (weights and
    activations in that dtype, float32 accumulation and norm statistics). Keyword-only extras:
    ``latents_mean``/``latents_std`` for checkpoints with ``z_dim != 16``, ``chunk_frames``
    (frames per chunk; None picks a memory-bounded default), ``progress`` (print progress on
    stderr for long calls), ``check_finite`` (reject NaN/Inf inputs; on by default).
    """

    def __init__(self, z_dim: int = 16, vae_pth: Optional[str] = "cache/vae_step_411000.pth",
                 dtype: torch.dtype = torch.float, device="cuda", *, latents_mean: Optional[Sequence[float]] = None,
                 latents_std: Optional[Sequence[float]] = None, chunk_frames: Optional[int] = None,
                 progress: bool = False, check_finite: bool = True):
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype}")
        self.device, self.dtype = _device(device), dtype
        self.chunk_frames, self.progress, self.check_finite = chunk_frames, progress, check_finite
        if vae_pth is None:
            self.model = WanVAEModel(dim=96, z_dim=z_dim, **RELEASE_CONFIG)
        else:
            sd = load_state_dict(vae_pth)
            config = config_from_state_dict(sd)
            if config["z_dim"] != z_dim:
                raise CheckpointError(f"vae_pth: the checkpoint has z_dim={config['z_dim']} but z_dim={z_dim} "
                                      f"was passed")
            self.model = WanVAEModel(**config)
            check_keys(self.model.state_dict(), sd)
            self.model.load_state_dict(sd)  # copied into the model's own (channels-last) parameters
        self.model = self.model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("latents_mean and latents_std go together: pass both or neither")
        if latents_mean is None:
            if z_dim != 16:
                raise ValueError(f"z_dim={z_dim}: only z_dim=16 has released latent statistics; "
                                 f"pass latents_mean= and latents_std= ({z_dim} values each)")
            latents_mean, latents_std = WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
        self.mean = torch.as_tensor(latents_mean, dtype=dtype, device=self.device)
        self.std = torch.as_tensor(latents_std, dtype=dtype, device=self.device)
        if self.mean.shape != (z_dim,) or self.std.shape != (z_dim,):
            raise ValueError(f"latents_mean and latents_std must have {z_dim} values each, got "
                             f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}")
        self.scale = [self.mean, 1.0 / self.std]

    def _items(self, items, name, rank, channels):
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(items).__name__}")
        for i, u in enumerate(items):
            if not torch.is_tensor(u) or u.dim() != rank or u.shape[0] != channels:
                got = tuple(u.shape) if torch.is_tensor(u) else type(u).__name__
                raise ValueError(f"{name}[{i}] must be a [{channels}, T, H, W] tensor, got {got}")
        return items

    def _progress(self, label, i, n):
        return ProgressPrinter(f"{label} {i + 1}/{n}") if self.progress else None

    def encode(self, videos):
        """``[3,T,H,W]`` videos in [-1, 1] -> float32 normalised latents ``[z_dim,1+(T-1)//4,H/8,W/8]``."""
        videos = self._items(videos, "videos", 4, 3)
        return [self.model.encode(u.unsqueeze(0), self.scale, chunk_frames=self.chunk_frames,
                                  check_finite=self.check_finite,
                                  progress=self._progress("encode", i, len(videos))).float().squeeze(0)
                for i, u in enumerate(videos)]

    def decode(self, zs):
        """Normalised latents ``[z_dim,T,h,w]`` -> float32 videos ``[3,1+4(T-1),8h,8w]`` clamped to [-1, 1]."""
        zs = self._items(zs, "zs", 4, self.model.z_dim)
        return [self.model.decode(u.unsqueeze(0), self.scale, chunk_frames=self.chunk_frames,
                                  check_finite=self.check_finite,
                                  progress=self._progress("decode", i, len(zs))).float().clamp_(-1, 1).squeeze(0)
                for i, u in enumerate(zs)]
