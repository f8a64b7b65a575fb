"""``WanVAEModel``: the Wan2.1 video VAE with upstream's constructor and state-dict keys."""
from __future__ import annotations

import warnings

from torch import nn

from ...layers import AttentionBlock, CausalConv3d, Resample, ResidualBlock, bordered_like, interior
from ..base import VAESpec
from .common import WanBase, WanEncoder, head, middle, run_head
from .config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN21_MEMORY, check_time_factor


class Encoder3d(WanEncoder):
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
        self.middle = middle(dims[-1], dropout)
        self.head = head(dims[-1], z_dim)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_upsample, dropout):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle(dims[0], dropout)
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
        self.head = head(dims[-1], 3)

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
            if state.bands is None:
                run_head(self.head, y, state, out=out[:, :, done:done + y.shape[2]])
            else:  # the band rows of a bordered band
                out[:, :, done:done + y.shape[2]].copy_(interior(state, run_head(self.head, y, state)))
            done += y.shape[2]


class WanVAEModel(WanBase):
    """The Wan2.1 VAE. Same constructor and state-dict keys as upstream's ``WanVAE_``;
    ``encode``/``decode`` take a ``chunk_frames=`` keyword (None: a memory-bounded default)."""

    memory_coefficients = WAN21_MEMORY

    def __init__(self, dim=128, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        check_time_factor(dim_mult, temperal_downsample)
        self.dim = dim
        self.dim_mult = list(dim_mult)
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]
        released = z_dim == len(WAN21_LATENTS_MEAN)
        self.spec = VAESpec("wan2.1", video_channels=3, z_dim=z_dim, time_factor=4,
                            space_factor=2 ** (len(dim_mult) - 1),
                            latents_mean=WAN21_LATENTS_MEAN if released else None,
                            latents_std=WAN21_LATENTS_STD if released else None)
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, self.temperal_downsample,
                                 dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, attn_scales, self.temperal_upsample, dropout)

    def latent_size(self, h, w):
        for _ in range(len(self.dim_mult) - 1):  # each spatial downsample: right/bottom pad 1, 3x3, stride 2
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        return h, w

    def check_size(self, h, w, name):
        f = self.spec.space_factor
        if h < f or w < f:
            raise ValueError(f"{name}: H and W must be at least {f} (the VAE downsamples by {f}), got H={h}, W={w}")
        if h % f or w % f:
            warnings.warn(f"{name}: H={h}, W={w} are not multiples of {f}; as upstream, the latent has "
                          f"floor(H/{f}) x floor(W/{f}) positions and the remainder only shapes the edge", stacklevel=5)

    def encoder_frame_elements(self, h, w):
        return self.dim * h * w  # the first convs' activations

    def decoder_frame_elements(self, h, w):
        h_out, w_out = self.video_size(h, w)
        return self.dim * h_out * w_out  # the last stage's activations

    def into_first_conv(self, x, state):
        body = self.encoder.conv1.buffer(state, bordered_like(state, x))
        interior(state, body).copy_(x)  # the one layout change: into channels-last, behind the history
        return body


__all__ = ["WanVAEModel", "Encoder3d", "Decoder3d"]
