"""Plain PyTorch reference of the Wan2.1 video VAE (the oracle for vaekernels' tests).

Written from shared/wan21_vae.md. It reproduces the original implementation
(upstream `wan/modules/vae.py`) value for value, including its quirks: the chunked schedule
(encode over 1, 4, 4, ... frames, decode one latent frame at a time), the first-frame rules of
the temporal resamplers, and the nearest-2x upsample done in float32. Module names and
parameter shapes match the released checkpoint `Wan2.1_VAE.pth`, so it loads unchanged.

Readability beats speed here. The package (`vaekernels`) never imports this file; tests and
benchmarks import both.

Causal state. A call to `WanVAE_.encode` / `.decode` creates one `Cache` (a dict) and passes it
through every layer; modules hold only parameters. Each temporal module keeps under its own
key what it must remember of the previous chunk:
  * a CausalConv3d with temporal padding: the last <= 2 frames of its input
    (this includes an upsample3d's time_conv, whose entry is an empty tensor after a first
    chunk of one frame: its history starts with zeros, not with frame 0);
  * a downsample3d Resample: the last frame of its (spatially downsampled) input.
A module that has no entry is on the first chunk of the clip.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CACHE_T",
    "Cache",
    "CausalConv3d",
    "RMS_norm",
    "ResidualBlock",
    "AttentionBlock",
    "Resample",
    "Encoder3d",
    "Decoder3d",
    "WanVAE_",
    "WanVAE",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
]

# A 3-frame causal kernel needs the 2 previous frames from the chunk before.
CACHE_T = 2

# Causal state of one encode/decode call: temporal module -> what it remembers (see module doc).
Cache = dict

# Per-channel latent normalisation constants of the released model (z_dim=16).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

# scale = [mean, 1/std]; each a tensor of z_dim values or a python float.
Scale = Sequence[Union[torch.Tensor, float]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _triple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _to_images(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] video -> [B*T, C, H, W] images, for the per-frame 2-D layers."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _to_video(x: torch.Tensor, b: int) -> torch.Tensor:
    """[B*T, C, H, W] images -> [B, C, T, H, W] video (inverse of _to_images)."""
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)


def _cached_conv(conv: "CausalConv3d", x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Run a causal conv on one chunk: its history comes from `cache`, and the last CACHE_T
    frames of (history + this chunk) are left there for the next chunk."""
    history = cache.get(conv)
    out = conv(x, history)
    seen = x if history is None else torch.cat([history, x], dim=2)
    # clone: keep only the frames we need alive, not the whole chunk they are a view of
    cache[conv] = seen[:, :, -CACHE_T:].clone()
    return out


def _run_layers(layers: nn.Sequential, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Run a Sequential, routing its causal convs through the cache."""
    for layer in layers:
        x = _cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
class CausalConv3d(nn.Conv3d):
    """Conv3d that is causal in time.

    With declared padding (pt, ph, pw) it pads 2*pt zero frames in front of the clip and none
    after, and ph / pw zeros on both sides in space. `cache_x` (the last <= 2 input frames of
    the previous chunk) is put in front instead, and the zero padding shrinks by its length.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        pt, ph, pw = _triple(padding)
        # the padding is applied by hand in forward; nn.Conv3d itself pads nothing
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.time_pad = 2 * pt
        self.space_pad = (ph, pw)

    def forward(self, x: torch.Tensor, cache_x: Optional[torch.Tensor] = None) -> torch.Tensor:
        time_pad = self.time_pad
        if cache_x is not None and time_pad > 0:
            x = torch.cat([cache_x, x], dim=2)
            time_pad -= cache_x.shape[2]
        ph, pw = self.space_pad
        x = F.pad(x, (pw, pw, ph, ph, time_pad, 0))  # F.pad lists the last dim first
        return super().forward(x)


class RMS_norm(nn.Module):
    """y = x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma  (F.normalize along dim 1).

    gamma has shape (C, 1, 1, 1) for video [B, C, T, H, W], (C, 1, 1) for images [N, C, H, W].
    The upstream class takes an optional bias; this model never uses one.
    """

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm, SiLU, conv3x3x3, norm, SiLU, dropout, conv3x3x3; plus a 1x1x1 shortcut when the
    channel count changes. Indices in `residual` are the checkpoint's (0, 2, 3, 6 hold weights)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        # 1x1x1 has no temporal extent, so the shortcut needs no cache
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return _run_layers(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame on its own.

    q, k, v are channels [0,C), [C,2C), [2C,3C) of `to_qkv`; the scale is 1/sqrt(C).
    Frames are never mixed, so this block needs no cache.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(_to_images(x))
        q, k, v = self.to_qkv(y).flatten(2).chunk(3, dim=1)  # each [B*T, C, H*W]
        scores = q.transpose(1, 2) @ k / math.sqrt(c)  # [B*T, HW (queries), HW (keys)]
        y = v @ scores.softmax(dim=-1).transpose(1, 2)  # [B*T, C, HW]
        y = self.proj(y.reshape(b * t, c, h, w))
        return _to_video(y, b) + x


class _Upsample2x(nn.Module):
    """Nearest 2x in H and W. Upstream runs it in float32 and casts back (even for float64
    input, which rounds it to float32); the golden outputs include that, so we do it too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype)


class Resample(nn.Module):
    """Spatial 2x up/down-sampling, optionally with 2x in time.

    modes: upsample2d, upsample3d, downsample2d, downsample3d. `resample.1` is the 2-D conv,
    applied to every frame; the 3d modes add `time_conv`. First-frame rules (spec):
      * downsample3d: output frame 0 = input frame 0 (time_conv skipped); output frame j >= 1
        = time_conv over input frames 2j-2, 2j-1, 2j.
      * upsample3d: input frame 0 gives one output frame without time_conv; every later frame t
        goes through a causal time_conv whose history starts with zeros (not with frame 0) and
        gives two frames, 2t-1 and 2t: channels [0,C) then [C,2C) of the time_conv output.
    The rules hold for any chunking: a first chunk of any length (odd, for downsample3d) and
    later chunks of any length (even, for downsample3d). The original uses 1-frame first chunks.
    """

    def __init__(self, dim: int, mode: str, up_dim: Optional[int] = None):
        """up_dim: output channels of an upsampler's conv; Wan2.1 halves them (the default), Wan2.2 keeps them."""
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, up_dim or dim // 2, 3, padding=1))
        elif mode in ("downsample2d", "downsample3d"):
            # zero-pad right and bottom only, then a stride-2 conv without padding
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown Resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        b = x.shape[0]
        x = _to_video(self.resample(_to_images(x)), b)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _upsample_time(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        passthrough = x[:, :, :0]
        if self.time_conv not in cache:
            # first chunk: frame 0 passes alone, and the time_conv's history starts with zeros,
            # not with frame 0 (an empty cache entry means: pad with zeros only)
            passthrough, x = x[:, :, :1], x[:, :, 1:]
            cache[self.time_conv] = x[:, :, :0]
        if x.shape[2] == 0:
            return passthrough
        y = _cached_conv(self.time_conv, x, cache)  # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        # output frame 2t+s takes channels [s*C, (s+1)*C) of time_conv's frame t
        y = y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return torch.cat([passthrough, y], dim=2)

    def _downsample_time(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        last = x[:, :, -1:].clone()
        if self in cache:
            # the previous chunk's last frame closes the first window of this one
            out = self.time_conv(torch.cat([cache[self], x], dim=2))
        elif x.shape[2] > 1:
            out = torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        else:
            out = x  # first frame of the clip: time_conv skipped
        cache[self] = last
        return out


# --------------------------------------------------------------------------------------------
# encoder, decoder, model
# --------------------------------------------------------------------------------------------
def _forward_blocks(blocks: nn.Module, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Run a list of ResidualBlock / AttentionBlock / Resample; only attention takes no cache."""
    for block in blocks:
        x = block(x) if isinstance(block, AttentionBlock) else block(x, cache)
    return x


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> [B, z_dim, 1+(T-1)//4, H/8, W/8] (z_dim is 2x the latent's:
    the mean and log-variance halves). Runs one chunk; the caller threads the cache."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 attn_scales=(), temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        scale = 1.0  # spatial scale relative to the input; attn_scales are given in it
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)

        downsamples = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                downsamples.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    downsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:  # no resample after the last level
                downsamples.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*downsamples)

        self.middle = nn.Sequential(
            ResidualBlock(out_dim, out_dim, dropout), AttentionBlock(out_dim), ResidualBlock(out_dim, out_dim, dropout)
        )
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _cached_conv(self.conv1, x, cache)
        x = _forward_blocks(self.downsamples, x, cache)
        x = _forward_blocks(self.middle, x, cache)
        return _run_layers(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, T, h, w] -> video [B, 3, 1+4*(T-1), 8h, 8w]. Runs one chunk; the caller
    threads the cache. Each level has num_res_blocks+1 ResidualBlocks then a Resample that halves
    the channels, so the next level's first block takes C/2."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 attn_scales=(), temperal_upsample=(False, True, True), dropout=0.0):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *reversed(dim_mult))]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0], dropout)
        )

        upsamples = []
        in_dim = dims[0]
        for i, out_dim in enumerate(dims[1:]):
            for _ in range(num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    upsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:  # no resample after the last level
                upsamples.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                in_dim = out_dim // 2  # the resample's 2-D conv halves the channels
                scale *= 2.0
        self.upsamples = nn.Sequential(*upsamples)

        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _cached_conv(self.conv1, x, cache)
        x = _forward_blocks(self.middle, x, cache)
        x = _forward_blocks(self.upsamples, x, cache)
        return _run_layers(self.head, x, cache)


def _split_chunks(x: torch.Tensor, chunk: Optional[int]) -> list:
    """Frame 0 alone, then chunks of `chunk` frames along dim 2 (the last may be shorter);
    chunk=None: the whole clip as one chunk."""
    if chunk is None:
        return [x]
    rest = x[:, :, 1:]
    return [x[:, :, :1]] + (list(rest.split(chunk, dim=2)) if rest.shape[2] else [])


def _channel_view(s: Union[torch.Tensor, float], z_dim: int):
    return s.view(1, z_dim, 1, 1, 1) if isinstance(s, torch.Tensor) else s


class WanVAE_(nn.Module):
    """The Wan2.1 VAE module (upstream name and constructor). State-dict keys are the
    checkpoint's: encoder.*, conv1.*, conv2.*, decoder.*.

    The released model is WanVAE_(dim=96, z_dim=16, temperal_downsample=[False, True, True]);
    the defaults below are upstream's. The decoder upsamples in time where the encoder
    downsampled: temperal_upsample = reversed(temperal_downsample).
    """

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        self.dim = dim
        self.z_dim = z_dim
        self.dim_mult = list(dim_mult)
        self.num_res_blocks = num_res_blocks
        self.attn_scales = list(attn_scales)
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]

        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales,
                                 self.temperal_downsample, dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, attn_scales,
                                 self.temperal_upsample, dropout)

    def encode_raw(self, x: torch.Tensor, chunk_frames: Optional[int] = 4):
        """Un-normalised posterior: video [B, 3, T, H, W] in [-1, 1] -> (mu_raw, log_var), each
        [B, z_dim, 1+(T-1)//4, H/8, W/8]; the two channel halves of conv1's output.

        Frames past 1 + 4*((T-1)//4) are ignored. The encoder sees frame 0 alone, then chunks of
        `chunk_frames` frames (the original: 4; any multiple of 4 gives the same result up to
        rounding), caches carried; chunk_frames=None runs the whole clip as one chunk.
        """
        if chunk_frames is not None and chunk_frames % 4:
            raise ValueError(f"chunk_frames must be a multiple of 4, got {chunk_frames}")
        t = 1 + 4 * ((x.shape[2] - 1) // 4)
        cache: Cache = {}
        out = torch.cat([self.encoder(c, cache) for c in _split_chunks(x[:, :, :t], chunk_frames)], dim=2)
        mu, log_var = self.conv1(out).chunk(2, dim=1)
        return mu, log_var

    def encode(self, x: torch.Tensor, scale: Scale, chunk_frames: Optional[int] = 4) -> torch.Tensor:
        """Normalised latent (mu_raw - mean) * (1/std), with scale = [mean, 1/std]. No sampling."""
        mu, _ = self.encode_raw(x, chunk_frames)
        return (mu - _channel_view(scale[0], self.z_dim)) * _channel_view(scale[1], self.z_dim)

    def decode(self, z: torch.Tensor, scale: Scale, chunk_latents: Optional[int] = 1) -> torch.Tensor:
        """Normalised latent [B, z_dim, T, h, w] -> video [B, 3, 1+4*(T-1), 8h, 8w], unclamped.

        z / scale[1] + scale[0] un-normalises, then conv2, then the decoder over latent frame 0
        alone and then chunks of `chunk_latents` frames (the original: 1), caches carried;
        chunk_latents=None runs the whole latent as one chunk.
        """
        z = z / _channel_view(scale[1], self.z_dim) + _channel_view(scale[0], self.z_dim)
        x = self.conv2(z)
        cache: Cache = {}
        return torch.cat([self.decoder(c, cache) for c in _split_chunks(x, chunk_latents)], dim=2)


class WanVAE:
    """User-facing wrapper with the upstream list API.

    WanVAE(z_dim=16, vae_pth=None, dtype=torch.float, device="cpu"): builds the released
    configuration, loads `vae_pth` (a plain state dict) when given, and keeps the module at
    `.model` (eval mode, no grad). `dtype` is the autocast dtype; the weights stay as loaded.
    """

    def __init__(self, z_dim: int = 16, vae_pth: Optional[str] = None, dtype: torch.dtype = torch.float,
                 device: Union[str, torch.device] = "cpu"):
        if z_dim != 16:
            raise ValueError(f"only z_dim=16 has latent normalisation constants, got z_dim={z_dim}")
        self.dtype = dtype
        self.device = torch.device(device)
        # as upstream, the constants are held in the autocast dtype
        self.mean = torch.tensor(WAN21_LATENTS_MEAN, dtype=dtype, device=self.device)
        self.std = torch.tensor(WAN21_LATENTS_STD, dtype=dtype, device=self.device)
        self.scale = [self.mean, 1.0 / self.std]

        config = dict(dim=96, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)
        if vae_pth is None:
            with self.device:
                model = WanVAE_(**config)
        else:
            # build on meta and adopt the loaded tensors: no time spent on a random init
            with torch.device("meta"):
                model = WanVAE_(**config)
            state = torch.load(vae_pth, map_location=self.device, weights_only=True)
            model.load_state_dict(state, assign=True)
        self.model = model.eval().requires_grad_(False)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode(self, videos: list) -> list:
        """list of [3, T, H, W] in [-1, 1] -> list of float32 [z_dim, 1+(T-1)//4, H/f, W/f] (f = 8; Wan2.2's 16)."""
        with torch.no_grad(), self._autocast():
            return [self.model.encode(u.unsqueeze(0), self.scale).float().squeeze(0) for u in videos]

    def decode(self, zs: list) -> list:
        """list of [z_dim, T, h, w] -> list of float32 [3, 1+4*(T-1), f*h, f*w] clamped to [-1, 1]."""
        with torch.no_grad(), self._autocast():
            return [self.model.decode(u.unsqueeze(0), self.scale).float().clamp_(-1, 1).squeeze(0) for u in zs]
