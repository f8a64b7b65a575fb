"""``WanVAEModel``: the Wan2.1 video VAE with upstream's constructor and state-dict keys."""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .distributions import DiagonalGaussian
from .engine import check_chunk_frames, run_decoder, run_encoder
from .layers import AttentionBlock, CausalConv3d, RMSNorm, Resample, ResidualBlock, norm_into_conv


class Encoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample, dropout):
        super().__init__()
        dims = [dim * u for u in [1] + list(dim_mult)]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.ModuleList(layers)
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1], dropout), AttentionBlock(dims[-1]),
                                     ResidualBlock(dims[-1], dims[-1], dropout)])
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], z_dim, 3, padding=1)])

    def forward(self, x, state):
        """``x``: a body handed out by ``conv1.buffer``. Returns fewer frames than it got, maybe none."""
        x = self.conv1(x, state)
        for layer in self.downsamples:
            x = layer(x, state)
            if not x.shape[2]:  # a temporal downsampler is waiting for more frames
                return x
        for layer in self.middle:
            x = layer(x, state)
        return self.head[2](norm_into_conv(self.head[0], self.head[2], x, state), state)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_upsample, dropout):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0], dropout)])
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every Resample halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.ModuleList(layers)
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1)])

    def forward(self, x, state, out, piece_frames=None):
        """Writes the video frames of the latent chunk ``x`` into ``out``. The layers from the last spatial
        upsampler on (the output resolution, where activations are largest) run ``piece_frames`` frames at a
        time (None: all at once); like chunking, this is only a schedule, as each piece's caches carry over."""
        x = self.conv1(x, state)
        for layer in self.middle:
            x = layer(x, state)
        tail = max((i for i, layer in enumerate(self.upsamples) if isinstance(layer, Resample)), default=0)
        for layer in self.upsamples[:tail]:
            x = layer(x, state)
        step, done = piece_frames or x.shape[2], 0
        for start in range(0, x.shape[2], step):
            y = x[:, :, start:start + step]
            for layer in self.upsamples[tail:]:
                y = layer(y, state)  # a time upsampler here doubles the frames of a piece
            self.head[2](norm_into_conv(self.head[0], self.head[2], y, state), state,
                         out=out[:, :, done:done + y.shape[2]])
            done += y.shape[2]


def _scale_view(s, like):
    if torch.is_tensor(s):
        return s.to(device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
    return float(s)


def check_video(x: torch.Tensor, name: str = "x", check_finite: bool = True) -> torch.Tensor:
    """Validate a ``[N,3,T,H,W]`` video; return it cut to ``1+4k`` frames (warning if frames are dropped)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"{name} must be a [N, 3, T, H, W] video, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (values in [-1, 1]), got {x.dtype}")
    n, _, t, h, w = x.shape
    if n < 1 or t < 1:
        raise ValueError(f"{name} must have at least one clip and one frame, got shape {tuple(x.shape)}")
    if h < 8 or w < 8:
        raise ValueError(f"{name}: H and W must be at least 8 (the VAE downsamples by 8), got H={h}, W={w}")
    if h % 8 or w % 8:
        warnings.warn(f"{name}: H={h}, W={w} are not multiples of 8; as upstream, the latent has "
                      f"floor(H/8) x floor(W/8) positions and the remainder only shapes the edge", stacklevel=3)
    keep = 1 + 4 * ((t - 1) // 4)
    if keep != t:
        warnings.warn(f"{name}: T={t} is not 1+4k; as upstream, the last {t - keep} frame(s) are ignored",
                      stacklevel=3)
        x = x[:, :, :keep]
    if check_finite:
        _check_finite(x, name)
    return x


def check_latent(z: torch.Tensor, z_dim: int, name: str = "z", check_finite: bool = True) -> torch.Tensor:
    if not torch.is_tensor(z):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 5 or z.shape[1] != z_dim:
        raise ValueError(f"{name} must be a [N, {z_dim}, T, h, w] latent, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if min(z.shape[0], z.shape[2], z.shape[3], z.shape[4]) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(z.shape)}")
    if check_finite:
        _check_finite(z, name)
    return z


def _check_finite(x, name):
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values (pass check_finite=False to skip this check)")


class WanVAEModel(nn.Module):
    """The Wan2.1 VAE. Same constructor and state-dict keys as upstream's ``WanVAE_``;
    ``encode``/``decode`` take a ``chunk_frames=`` keyword (None: a memory-bounded default)."""

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs {len(dim_mult) - 1} values for dim_mult={list(dim_mult)}, "
                             f"got {list(temperal_downsample)}")
        if sum(map(bool, temperal_downsample)) != 2:
            # the schedule (1+4k frames, 4 frames per latent frame) is built for Wan's time factor of 4
            raise ValueError(f"temperal_downsample must hold exactly two True values (a time factor of 4, as in "
                             f"Wan2.1), got {list(temperal_downsample)}")
        self.dim, self.z_dim = dim, z_dim
        self.dim_mult = list(dim_mult)
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, self.temperal_downsample,
                                 dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, attn_scales, self.temperal_upsample, dropout)

    def latent_size(self, h, w):
        for _ in range(len(self.dim_mult) - 1):  # each spatial downsample: right/bottom pad 1, 3x3, stride 2
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        return h, w

    def video_size(self, h, w):
        f = 2 ** (len(self.dim_mult) - 1)
        return h * f, w * f

    def _prepare(self, x):
        return x.to(dtype=self.conv1.weight.dtype, device=self.conv1.weight.device)

    @torch.no_grad()
    def encode_raw(self, x, *, chunk_frames: Optional[int] = None, check_finite: bool = True,
                   progress: Optional[Callable[[int, int], None]] = None):
        """``(mu, log_var)`` of the posterior, un-normalised (``log_var`` unclamped, as upstream)."""
        check_chunk_frames(chunk_frames)
        x = self._prepare(check_video(x, "x", check_finite))
        out = run_encoder(self, x, chunk_frames, progress)
        return out[:, : self.z_dim], out[:, self.z_dim:]

    def encode(self, x, scale, *, chunk_frames: Optional[int] = None, check_finite: bool = True,
               progress: Optional[Callable[[int, int], None]] = None):
        """Normalised posterior mean ``(mu - scale[0]) * scale[1]``, as upstream's ``encode``."""
        mu, _ = self.encode_raw(x, chunk_frames=chunk_frames, check_finite=check_finite, progress=progress)
        return (mu - _scale_view(scale[0], mu)) * _scale_view(scale[1], mu)

    @torch.no_grad()
    def decode(self, z, scale, *, chunk_frames: Optional[int] = None, check_finite: bool = True,
               progress: Optional[Callable[[int, int], None]] = None):
        """Unclamped video ``[N,3,1+4(T-1),8h,8w]`` of a normalised latent, as upstream's ``decode``."""
        check_chunk_frames(chunk_frames)
        z = self._prepare(check_latent(z, self.z_dim, "z", check_finite))
        z = z / _scale_view(scale[1], z) + _scale_view(scale[0], z)
        return run_decoder(self, z, chunk_frames, progress)

    def posterior(self, x, *, chunk_frames: Optional[int] = None, check_finite: bool = True) -> DiagonalGaussian:
        """The diagonal Gaussian posterior q(z|x) (un-normalised latent space)."""
        mu, log_var = self.encode_raw(x, chunk_frames=chunk_frames, check_finite=check_finite)
        return DiagonalGaussian(mu, log_var)

    def sample(self, x, scale, deterministic: bool = False, generator: Optional[torch.Generator] = None, *,
               chunk_frames: Optional[int] = None):
        """A latent drawn from the posterior (its mean if ``deterministic``), normalised as ``encode``."""
        post = self.posterior(x, chunk_frames=chunk_frames)
        z = post.mode() if deterministic else post.sample(generator)
        return (z - _scale_view(scale[0], z)) * _scale_view(scale[1], z)

    def forward(self, x, scale, chunk_frames: Optional[int] = None):
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(x, scale, chunk_frames=chunk_frames), scale, chunk_frames=chunk_frames)


__all__ = ["WanVAEModel", "Encoder3d", "Decoder3d", "check_video", "check_latent"]
