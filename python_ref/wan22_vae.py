"""Plain PyTorch reference of the Wan2.2 video VAE (TI2V-5B), the oracle for vaekernels' tests.

Written from shared/wan22_vae.md. It reproduces the official implementation (``wan/modules/vae2_2.py`` of the
``wan22`` package) value for value, chunked as the official code chunks: encode over 1, 4, 4, ... frames, decode
one latent frame at a time, with the shortcuts' per-chunk rules (AvgDown3D pads each chunk in front to a whole
number of its time groups; DupUp3D drops its first frames on the clip's first chunk). Module names and parameter
shapes match the released checkpoint (``shared/wan22_vae_keys.tsv``).

The blocks it shares with Wan2.1 (causal conv, RMS norm, residual and attention blocks, resamplers with their
first-frame rules) are python_ref's Wan2.1 ones (``wan21_vae.py``): the differences are the 2x2 patchify, the
parameter-free stage shortcuts, upsamplers that keep their channels, and a decoder on its own width.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .wan21_vae import (AttentionBlock, Cache, CausalConv3d, RMS_norm, Resample, ResidualBlock, Scale, WanVAE,
                        _cached_conv, _channel_view, _forward_blocks, _run_layers, _split_chunks)

__all__ = ["patchify", "unpatchify", "AvgDown3D", "DupUp3D", "Down_ResidualBlock", "Up_ResidualBlock", "Encoder3d",
           "Decoder3d", "WanVAE_", "Wan2_2_VAE", "WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD"]

# Per-channel latent normalisation constants of the released model (z_dim=48).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

PATCH = 2


def patchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p]: channel c*p*p + r*p + q holds pixel (p*h + q, p*w + r)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)  # b, c, t, h, q, w, r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """The inverse of patchify: [B, C*p*p, T, h, w] -> [B, C, T, p*h, p*w]."""
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # b, c, r, q, t, h, w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class AvgDown3D(nn.Module):
    """Parameter-free downsampling shortcut: pad zero frames in front to a multiple of factor_t, move each
    factor_t x factor_s x factor_s block into channels (input channel first, then the t, h, w offsets) and average
    groups of in*factor/out consecutive channels down to out."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.factor = factor_t * factor_s * factor_s
        self.group_size = in_channels * self.factor // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free upsampling shortcut: repeat each channel out*factor/in times and unfold the repeats into
    factor_t x factor_s x factor_s blocks (the inverse of AvgDown3D's folding); on the clip's first chunk the first
    factor_t - 1 frames are dropped."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.repeats = out_channels * factor_t * factor_s * factor_s // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).reshape(b, self.out_channels, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class Down_ResidualBlock(nn.Module):
    """An encoder stage: `mult` ResidualBlocks (the first changes the channels), then a Resample unless it is the
    last stage; the AvgDown3D of the stage's input is added to its output."""

    def __init__(self, in_dim, out_dim, dropout, mult, temperal_downsample=False, down_flag=False):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temperal_downsample else 1, 2 if down_flag else 1)
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(mult)]
        if down_flag:
            blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        return _forward_blocks(self.downsamples, x, cache) + shortcut


class Up_ResidualBlock(nn.Module):
    """A decoder stage: `mult` ResidualBlocks, then a Resample that keeps the channels unless it is the last
    stage; stages with a Resample add the DupUp3D of their input to their output."""

    def __init__(self, in_dim, out_dim, dropout, mult, temperal_upsample=False, up_flag=False):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temperal_upsample else 1, 2) if up_flag else None
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(mult)]
        if up_flag:
            blocks.append(Resample(out_dim, "upsample3d" if temperal_upsample else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: Cache, first_chunk: bool = False) -> torch.Tensor:
        main = _forward_blocks(self.upsamples, x, cache)
        return main if self.avg_shortcut is None else main + self.avg_shortcut(x, first_chunk)


class Encoder3d(nn.Module):
    """Patches [B, 12, T, H/2, W/2] -> [B, z_dim, 1+(T-1)//4, H/16, W/16] (z_dim is 2x the latent's: the mean and
    log-variance halves). Runs one chunk; the caller threads the cache."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*[
            Down_ResidualBlock(in_dim, out_dim, dropout, num_res_blocks,
                               temperal_downsample[i] if i < len(temperal_downsample) else False,
                               down_flag=i != len(dim_mult) - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1], dropout), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1], dropout))
        self.head = nn.Sequential(RMS_norm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _cached_conv(self.conv1, x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        x = _forward_blocks(self.middle, x, cache)
        return _run_layers(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, T, h, w] -> patches [B, 12, 1+4*(T-1), 8h, 8w]. Runs one chunk; the caller threads the
    cache and says whether this is the clip's first chunk."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_upsample=(False, True, True), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))
        self.upsamples = nn.Sequential(*[
            Up_ResidualBlock(in_dim, out_dim, dropout, num_res_blocks + 1,
                             temperal_upsample[i] if i < len(temperal_upsample) else False,
                             up_flag=i != len(dim_mult) - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = nn.Sequential(RMS_norm(dims[-1], images=False), nn.SiLU(),
                                  CausalConv3d(dims[-1], 3 * PATCH * PATCH, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache, first_chunk: bool = False) -> torch.Tensor:
        x = _cached_conv(self.conv1, x, cache)
        x = _forward_blocks(self.middle, x, cache)
        for stage in self.upsamples:
            x = stage(x, cache, first_chunk)
        return _run_layers(self.head, x, cache)


class WanVAE_(nn.Module):
    """The Wan2.2 VAE module (the official name and constructor). State-dict keys are the checkpoint's: encoder.*,
    conv1.*, conv2.*, decoder.*. The released model is WanVAE_(dim=160, dec_dim=256, z_dim=48,
    temperal_downsample=[False, True, True]); the defaults below are the official module's."""

    def __init__(self, dim=160, dec_dim=256, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        self.z_dim = z_dim
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, self.temperal_downsample,
                                 dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dec_dim, z_dim, dim_mult, num_res_blocks, attn_scales, self.temperal_upsample,
                                 dropout)

    def encode_raw(self, x: torch.Tensor, chunk_frames: Optional[int] = 4):
        """Video [B, 3, T, H, W] in [-1, 1] -> (mu_raw, log_var), each [B, z_dim, 1+(T-1)//4, H/16, W/16].

        Frames past 1 + 4*((T-1)//4) are ignored. The encoder sees the patches of frame 0 alone, then chunks of
        `chunk_frames` frames (the official: 4; any multiple of 4 gives the same result up to rounding), caches
        carried; chunk_frames=None runs the whole clip as one chunk.
        """
        if chunk_frames is not None and chunk_frames % 4:
            raise ValueError(f"chunk_frames must be a multiple of 4, got {chunk_frames}")
        t = 1 + 4 * ((x.shape[2] - 1) // 4)
        cache: Cache = {}
        chunks = _split_chunks(patchify(x[:, :, :t]), chunk_frames)
        out = torch.cat([self.encoder(c, cache) for c in chunks], dim=2)
        mu, log_var = self.conv1(out).chunk(2, dim=1)
        return mu, log_var

    def encode(self, x: torch.Tensor, scale: Scale, chunk_frames: Optional[int] = 4) -> torch.Tensor:
        """Normalised latent (mu_raw - mean) * (1/std), with scale = [mean, 1/std]. No sampling."""
        mu, _ = self.encode_raw(x, chunk_frames)
        return (mu - _channel_view(scale[0], self.z_dim)) * _channel_view(scale[1], self.z_dim)

    def decode(self, z: torch.Tensor, scale: Scale, chunk_latents: Optional[int] = 1) -> torch.Tensor:
        """Normalised latent [B, z_dim, T, h, w] -> video [B, 3, 1+4*(T-1), 16h, 16w], unclamped.

        Un-normalise, conv2, then the decoder over latent frame 0 alone (the clip's first chunk) and then chunks of
        `chunk_latents` frames (the official: 1), caches carried; chunk_latents=None: the whole latent at once.
        """
        z = z / _channel_view(scale[1], self.z_dim) + _channel_view(scale[0], self.z_dim)
        x = self.conv2(z)
        cache: Cache = {}
        chunks = _split_chunks(x, chunk_latents)
        out = torch.cat([self.decoder(c, cache, first_chunk=i == 0) for i, c in enumerate(chunks)], dim=2)
        return unpatchify(out)


class Wan2_2_VAE(WanVAE):
    """User-facing wrapper with the official list API (encode and decode as python_ref's Wan2.1 wrapper's).

    Wan2_2_VAE(z_dim=48, c_dim=160, vae_pth=None, dim_mult=[1, 2, 4, 4], temperal_downsample=[False, True, True],
    dtype=torch.float, device="cpu"): builds the released configuration (decoder width 256), loads `vae_pth` (a
    plain state dict) when given, and keeps the module at `.model` (eval mode, no grad). `dtype` is the autocast
    dtype; the weights stay as loaded.
    """

    def __init__(self, z_dim: int = 48, c_dim: int = 160, vae_pth: Optional[str] = None, dim_mult=(1, 2, 4, 4),
                 temperal_downsample=(False, True, True), dtype: torch.dtype = torch.float,
                 device: Union[str, torch.device] = "cpu"):
        if z_dim != 48:
            raise ValueError(f"only z_dim=48 has latent normalisation constants, got z_dim={z_dim}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.mean = torch.tensor(WAN22_LATENTS_MEAN, dtype=dtype, device=self.device)
        self.std = torch.tensor(WAN22_LATENTS_STD, dtype=dtype, device=self.device)
        self.scale = [self.mean, 1.0 / self.std]
        config = dict(dim=c_dim, z_dim=z_dim, dim_mult=list(dim_mult), num_res_blocks=2, attn_scales=[],
                      temperal_downsample=list(temperal_downsample), dropout=0.0)
        if vae_pth is None:
            with self.device:
                model = WanVAE_(**config)
        else:
            with torch.device("meta"):
                model = WanVAE_(**config)
            model.load_state_dict(torch.load(vae_pth, map_location=self.device, weights_only=True), assign=True)
        self.model = model.eval().requires_grad_(False)
