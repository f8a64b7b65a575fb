"""Drop-ins for the official Wan wrappers: ``FastWanVAE`` (also ``WanVAE``, ``Wan2_1_VAE``) and ``Wan2_2_VAE``.
Same constructors, list in, list out: changing the import line is the whole migration."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..models.wan import WAN21, WAN22
from .base import ListVAE


class FastWanVAE(ListVAE):
    """Drop-in for upstream ``WanVAE(z_dim=16, vae_pth=..., dtype=torch.float, device="cuda")`` (Wan2.1's VAE,
    also Wan2.2 14B's and SkyReels-V2's; the official ``Wan2_1_VAE`` of ``vae2_1.py`` takes the same arguments).

    ``vae_pth=None`` builds random weights (for tests and benchmarks), of the released size unless
    ``config`` changes it (e.g. ``config={"dim": 32}``; keys: the model's constructor arguments). ``dtype`` is
    the compute precision: float32 is the parity mode, bfloat16/float16 the fast modes (weights and
    activations in that dtype, float32 accumulation and norm statistics; float16 has no fast CPU
    kernels: use bfloat16 on CPU). Keyword-only extras: ``latents_mean``/``latents_std`` for
    checkpoints with ``z_dim != 16``, ``chunk_frames`` (frames per chunk; None picks a memory-bounded
    default), ``max_memory`` (bytes, or e.g. ``"4GiB"``: each call's chunking is picked so that its estimated
    memory, the float32 result included, fits; see ``model.estimate_memory``; not with ``chunk_frames``),
    ``progress`` (print progress on stderr for long calls), ``check_finite`` (reject NaN/Inf inputs; on by
    default), ``config`` (random weights only, as above), ``group`` (a torch.distributed process group: every
    ``encode``/``decode`` is split over its ranks by bands of rows, each rank calling with the same lists and
    getting the whole results; see ``model.encode_raw``) and ``timeout`` (seconds a rank of the group waits for
    another before raising ``PeerError``).
    """

    def __init__(self, z_dim: int = 16, vae_pth: Optional[str] = "cache/vae_step_411000.pth",
                 dtype: torch.dtype = torch.float, device="cuda", *, latents_mean: Optional[Sequence[float]] = None,
                 latents_std: Optional[Sequence[float]] = None, chunk_frames: Optional[int] = None,
                 progress: bool = False, check_finite: bool = True, config: Optional[dict] = None, max_memory=None,
                 group=None, timeout: Optional[float] = None):
        super().__init__(WAN21, {**WAN21.released, "z_dim": z_dim}, z_dim, vae_pth, dtype, device,
                         latents_mean=latents_mean, latents_std=latents_std, chunk_frames=chunk_frames,
                         progress=progress, check_finite=check_finite, overrides=config, max_memory=max_memory,
                         group=group, timeout=timeout)


WanVAE = Wan2_1_VAE = FastWanVAE


class Wan2_2_VAE(ListVAE):
    """Drop-in for the official ``Wan2_2_VAE(z_dim=48, c_dim=160, vae_pth=None, dim_mult=[1, 2, 4, 4],
    temperal_downsample=[False, True, True], dtype=torch.float, device="cuda")`` (the TI2V-5B VAE).

    ``vae_pth=None`` builds random weights of width ``c_dim`` (the decoder's: 256, as the official; ``config``
    sets any constructor argument, e.g. ``config={"dim": 16, "dec_dim": 32}``); with a checkpoint, its tensor
    shapes give the widths (dim, dec_dim) and z_dim, which must be ``z_dim``. ``dtype``,
    and the keyword-only extras, as for ``FastWanVAE``; the released statistics are for ``z_dim=48``.
    """

    def __init__(self, z_dim: int = 48, c_dim: int = 160, vae_pth: Optional[str] = None,
                 dim_mult: Sequence[int] = (1, 2, 4, 4), temperal_downsample: Sequence[bool] = (False, True, True),
                 dtype: torch.dtype = torch.float, device="cuda", *, latents_mean: Optional[Sequence[float]] = None,
                 latents_std: Optional[Sequence[float]] = None, chunk_frames: Optional[int] = None,
                 progress: bool = False, check_finite: bool = True, config: Optional[dict] = None, max_memory=None,
                 group=None, timeout: Optional[float] = None):
        base = {**WAN22.released, "z_dim": z_dim, "dim": c_dim, "dim_mult": list(dim_mult),
                "temperal_downsample": list(temperal_downsample)}
        super().__init__(WAN22, base, z_dim, vae_pth, dtype, device, latents_mean=latents_mean,
                         latents_std=latents_std, chunk_frames=chunk_frames, progress=progress,
                         check_finite=check_finite, overrides=config, max_memory=max_memory,
                         group=group, timeout=timeout)
