"""What the drop-in wrappers share: the upstream list API (list in, list out) over a registered model."""
from __future__ import annotations

import math
import sys
import warnings
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from .. import engine
from ..models import CheckpointError, ModelEntry, build, load_state_dict
from ..models.checkpoint import unwrap
from ..models.split import check_options as check_split_options

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available here; pass device='cpu'")
    return device


class Progress:
    """A tqdm bar on stderr for one call (``label``, in frames), fed by the engine's ``progress(done, total)``;
    shown once the call has run longer than a second."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, done: int, total: int):
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="frame", file=sys.stderr, delay=1.0)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def warn_float16_cpu():
    """Once per process: float16 has no fast CPU kernels (the C++ ops take float32 and bfloat16)."""
    global _warned_float16
    if not _warned_float16:
        _warned_float16 = True
        warnings.warn("dtype=torch.float16 on CPU runs on the plain torch backend, many times slower than "
                      "bfloat16 (which has the C++ kernels, with float32 math): use dtype=torch.bfloat16 on CPU",
                      stacklevel=4)


_warned_float16 = False


class ListVAE:
    """Upstream's wrapper API over the model of ``entry``: ``.model``, ``.scale = [mean, 1/std]``, ``encode`` and
    ``decode`` of lists of unbatched tensors, float32 results, decode clamped to [-1, 1].

    ``vae_pth``: a checkpoint's path, or a state dict already loaded; None builds random weights (for tests and
    benchmarks) of the released configuration ``config``, updated with the user's ``overrides`` (e.g.
    ``{"dim": 32}`` for a small model). A checkpoint's own shapes give the widths and z_dim (so small test
    checkpoints load too), whose z_dim must be ``z_dim``. ``dtype`` is the compute precision: float32 is the
    parity mode, bfloat16/float16 the fast modes (weights and activations in that dtype, float32 accumulation and
    norm statistics; on CPU, float16 runs on the plain torch backend, much slower: use bfloat16 there).
    """

    def __init__(self, entry: ModelEntry, config: dict, z_dim: int, vae_pth, dtype, device, *,
                 latents_mean: Optional[Sequence[float]], latents_std: Optional[Sequence[float]],
                 chunk_frames: Optional[int], progress: bool, check_finite: bool, overrides: Optional[dict] = None,
                 max_memory=None, group=None, timeout: Optional[float] = None):
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype}")
        engine.check_chunking(chunk_frames, max_memory)
        self.device, self.dtype = _device(device), dtype
        if dtype == torch.float16 and self.device.type == "cpu":
            warn_float16_cpu()
        self.chunk_frames, self.max_memory = chunk_frames, max_memory
        check_split_options(group, max_memory, timeout=timeout)
        self.split = {} if group is None else dict(group=group, timeout=timeout)  # the model calls' split options
        self.progress, self.check_finite = progress, check_finite
        if overrides is not None:
            if vae_pth is not None:
                raise ValueError("config= is for random weights (vae_pth=None); a checkpoint's tensor shapes give "
                                 "its configuration")
            unknown = sorted(set(overrides) - set(config))
            if unknown:
                raise ValueError(f"config: unknown keys {unknown}; {entry.title}'s are {sorted(config)}")
            config = {**config, **overrides}
            z_dim = config["z_dim"]
        if vae_pth is None:
            self.model = build(entry, config)
        else:
            sd = unwrap(vae_pth) if isinstance(vae_pth, dict) else load_state_dict(vae_pth)
            found = entry.config_of(sd)
            if found is None:
                raise CheckpointError(f"vae_pth: not a {entry.title} VAE checkpoint (it has {len(sd)} tensors, e.g. "
                                      f"{sorted(sd)[:3]})")
            if found["z_dim"] != z_dim:
                raise CheckpointError(f"vae_pth: the checkpoint has z_dim={found['z_dim']} but z_dim={z_dim} "
                                      f"was passed")
            self.model = build(entry, {**config, **found}, sd)
        self.model = self.model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("latents_mean and latents_std go together: pass both or neither")
        if latents_mean is None:
            spec = self.model.spec
            if spec.latents_mean is None:
                raise ValueError(f"z_dim={z_dim}: only z_dim={entry.released['z_dim']} has released latent statistics; "
                                 f"pass latents_mean= and latents_std= ({z_dim} values each)")
            latents_mean, latents_std = spec.latents_mean, spec.latents_std
        self.mean = torch.as_tensor(latents_mean, dtype=dtype, device=self.device)
        self.std = torch.as_tensor(latents_std, dtype=dtype, device=self.device)
        if self.mean.shape != (z_dim,) or self.std.shape != (z_dim,):
            raise ValueError(f"latents_mean and latents_std must have {z_dim} values each, got "
                             f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}")
        self.scale = [self.mean, 1.0 / self.std]

    def _items(self, items, name, channels):
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, got {type(items).__name__}")
        for i, u in enumerate(items):
            if not torch.is_tensor(u) or u.dim() != 4 or u.shape[0] != channels:
                got = tuple(u.shape) if torch.is_tensor(u) else type(u).__name__
                raise ValueError(f"{name}[{i}] must be a [{channels}, T, H, W] tensor, got {got}")
        return items

    def _room(self, out_elements: int):
        """``max_memory`` less the float32 copy of an output of ``out_elements`` that this wrapper returns (none when
        the model computes in float32)."""
        if self.max_memory is None or self.dtype == torch.float32:
            return self.max_memory
        limit, copy = engine.parse_bytes(self.max_memory), 4 * out_elements
        if limit <= copy:
            raise ValueError(f"max_memory={engine.format_bytes(limit)} does not hold even the float32 output "
                             f"({engine.format_bytes(copy)})")
        return limit - copy

    def _progress(self, label, i, n):
        return Progress(f"{label} {i + 1}/{n}") if self.progress else None

    def encode(self, videos):
        """``[C,T,H,W]`` videos in [-1, 1] -> float32 normalised latents ``[z_dim,1+(T-1)//4,H/f,W/f]``."""
        videos = self._items(videos, "videos", self.model.spec.video_channels)
        spec = self.model.spec
        return [self.model.encode(u.unsqueeze(0), self.scale, chunk_frames=self.chunk_frames,
                                  max_memory=self._room(spec.z_dim * spec.latent_frames(u.shape[1]) *
                                                        math.prod(self.model.latent_size(*u.shape[2:]))),
                                  check_finite=self.check_finite, progress=self._progress("encode", i, len(videos)),
                                  **self.split).float().squeeze(0)
                for i, u in enumerate(videos)]

    def decode(self, zs):
        """Normalised latents ``[z_dim,T,h,w]`` -> float32 videos ``[C,1+4(T-1),f*h,f*w]`` clamped to [-1, 1]."""
        zs = self._items(zs, "zs", self.model.z_dim)
        spec = self.model.spec
        return [self.model.decode(u.unsqueeze(0), self.scale, chunk_frames=self.chunk_frames,
                                  max_memory=self._room(spec.video_channels * spec.video_frames(u.shape[1]) *
                                                        math.prod(self.model.video_size(*u.shape[2:]))),
                                  check_finite=self.check_finite, progress=self._progress("decode", i, len(zs)),
                                  **self.split).float().clamp_(-1, 1).squeeze(0)
                for i, u in enumerate(zs)]

    def encode_frames(self, pieces):
        """``encode`` of one video that comes as consecutive pieces ``[C, t, H, W]`` in [-1, 1] (e.g. read from a
        file as it goes) -> its float32 normalised latent ``[z_dim, 1+(T-1)//4, H/f, W/f]``; only a chunk's frames
        are held at a time. Each piece is checked as it comes. Not split over a process group (yet)."""
        self._unsplit("encode_frames")
        batched = (p.unsqueeze(0) if torch.is_tensor(p) and p.dim() == 4 else p for p in pieces)
        return self.model.encode_frames(batched, self.scale, chunk_frames=self.chunk_frames,
                                        max_memory=self.max_memory, check_finite=self.check_finite).float().squeeze(0)

    def decode_frames(self, z, *, output_device=None):
        """One normalised latent ``[z_dim,T,h,w]`` -> its video chunk by chunk: float32 ``[C,frames,H,W]`` clamped
        to [-1, 1], in order (concatenated, ``decode([z])[0]``). Only one chunk is held at a time: for writing long
        videos as they are decoded. ``z`` is checked at the call, before the first chunk. ``output_device``: where
        the chunks are handed out (``"cpu"`` from CUDA: each copied to pinned host memory); default: the VAE's. Not
        split over a process group (yet)."""
        self._unsplit("decode_frames")
        if not torch.is_tensor(z) or z.dim() != 4 or z.shape[0] != self.model.z_dim:
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"z must be a [{self.model.z_dim}, T, h, w] tensor, got {got}")
        # max_memory: the float32 copy of the one chunk the caller holds is not counted
        chunks = self.model.decode_frames(z.unsqueeze(0), self.scale, chunk_frames=self.chunk_frames,
                                          max_memory=self.max_memory, check_finite=self.check_finite,
                                          progress=self._progress("decode", 0, 1), output_device=output_device)
        return (c.float().clamp_(-1, 1).squeeze(0) for c in chunks)

    def _unsplit(self, method):
        if self.split:
            raise NotImplementedError(f"{method} does not split over a process group yet: use encode / decode, or a "
                                      f"wrapper made without group=")

    def warm_up(self, height: int, width: int) -> float:
        """Compile what videos of ``height x width`` frames will need (the Triton kernels on CUDA), so that the first
        ``encode``/``decode`` of them takes its running time; returns the seconds it took (``model.warm_up``)."""
        return self.model.warm_up(height, width)
