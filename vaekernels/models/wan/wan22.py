"""``Wan22VAEModel``: the Wan2.2 video VAE (TI2V-5B) with the official constructor and state-dict keys.

What differs from Wan2.1 (shared/wan22_vae.md): the video enters as 2x2 patches (12 channels) and leaves the
same way, every stage adds a parameter-free shortcut (``blocks.py``), upsamplers keep their channels, and
the decoder is built on its own width ``dec_dim``.
"""
from __future__ import annotations

from torch import nn

from ...layers import CausalConv3d, bordered_like, empty_frames, interior
from ..base import VAESpec
from .blocks import DownStage, UpStage, patchify_into, unpatchify_into
from .common import WanBase, WanEncoder, head, middle, run_head
from .config import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, WAN22_MEMORY, check_time_factor

PATCH = 2
VIDEO_CHANNELS = 3


class Encoder3d(WanEncoder):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample, dropout):
        super().__init__()
        dims = [dim * u for u in [1] + list(dim_mult)]
        self.conv1 = CausalConv3d(VIDEO_CHANNELS * PATCH * PATCH, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList([
            DownStage(in_dim, out_dim, dropout, num_res_blocks,
                      temperal_downsample[i] if i < len(temperal_downsample) else False, i != len(dim_mult) - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = middle(dims[-1], dropout)
        self.head = head(dims[-1], z_dim)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_upsample, dropout):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult)[::-1]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle(dims[0], dropout)
        self.upsamples = nn.ModuleList([
            UpStage(in_dim, out_dim, dropout, num_res_blocks + 1,
                    temperal_upsample[i] if i < len(temperal_upsample) else False, i != len(dim_mult) - 1)
            for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = head(dims[-1], VIDEO_CHANNELS * PATCH * PATCH)
        # the last stage with a resample: its resample and everything after run at the output resolution
        self.tail = max(i for i, stage in enumerate(self.upsamples) if stage.resample is not None)
        self.output_channels = max(dims[self.tail + 1:])

    def forward(self, x, state, out, piece_frames=None):
        """Writes the video frames of the latent chunk ``x`` into ``out``. From the last stage's resample on (the
        output resolution, where activations are largest) it runs ``piece_frames`` frames of that stage's input at
        a time (None: all at once); like chunking, this is only a schedule, as each piece's caches carry over."""
        x = self.conv1(x, state)
        for layer in self.middle:
            x = layer(x, state)
        for stage in self.upsamples[:self.tail]:
            x = stage(x, state)
        last = self.upsamples[self.tail]
        h = last.body(x, state)
        step, done = piece_frames or x.shape[2], 0
        for start in range(0, x.shape[2], step):
            y = last.finish(h[:, :, start:start + step], x[:, :, start:start + step], state)
            for stage in self.upsamples[self.tail + 1:]:
                y = stage(y, state)
            patches = empty_frames(y, self.head[2].out_channels, y.shape[2])
            run_head(self.head, y, state, out=patches)
            # the one copy out of channels-last (of the band rows, in a bordered band)
            unpatchify_into(out[:, :, done:done + y.shape[2]], interior(state, patches), PATCH)
            done += y.shape[2]


class Wan22VAEModel(WanBase):
    """The Wan2.2 VAE. Same constructor and state-dict keys as the official ``WanVAE_`` of ``vae2_2.py``;
    ``encode``/``decode`` take a ``chunk_frames=`` keyword (None: a memory-bounded default)."""

    memory_coefficients = WAN22_MEMORY

    def __init__(self, dim=160, dec_dim=256, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(True, True, False), dropout=0.0):
        super().__init__()
        check_time_factor(dim_mult, temperal_downsample)
        if attn_scales:
            # the official model builds no attention in its stages whatever attn_scales says
            raise ValueError(f"attn_scales: the Wan2.2 VAE has attention in its middle blocks only, got "
                             f"{list(attn_scales)}")
        self.dim, self.dec_dim = dim, dec_dim
        self.dim_mult = list(dim_mult)
        self.temperal_downsample = list(temperal_downsample)
        self.temperal_upsample = self.temperal_downsample[::-1]
        released = z_dim == len(WAN22_LATENTS_MEAN)
        self.spec = VAESpec("wan2.2", video_channels=VIDEO_CHANNELS, z_dim=z_dim, time_factor=4,
                            space_factor=PATCH * 2 ** (len(dim_mult) - 1), patch_size=PATCH,
                            latents_mean=WAN22_LATENTS_MEAN if released else None,
                            latents_std=WAN22_LATENTS_STD if released else None)
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, attn_scales, self.temperal_downsample,
                                 dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dec_dim, z_dim, dim_mult, num_res_blocks, attn_scales, self.temperal_upsample,
                                 dropout)

    def latent_size(self, h, w):
        f = self.spec.space_factor
        return h // f, w // f

    def check_size(self, h, w, name):
        if h % PATCH or w % PATCH:
            raise ValueError(f"{name}: H and W must be even (the Wan2.2 VAE folds 2x2 pixel blocks into channels), "
                             f"got H={h}, W={w}")
        f = self.spec.space_factor
        if h < f or w < f or h % f or w % f:
            # the official code fails on them too (inside AvgDown3D: every stage halves H and W exactly)
            raise ValueError(f"{name}: H and W must be positive multiples of {f} for the Wan2.2 VAE (after the 2x2 "
                             f"patches, each of its {len(self.dim_mult) - 1} downsampling stages halves them "
                             f"exactly), got H={h}, W={w}")

    def encoder_frame_elements(self, h, w):
        return self.dim * (h // PATCH) * (w // PATCH)  # the first convs' activations

    def decoder_frame_elements(self, h, w):
        h_out, w_out = self.video_size(h, w)
        return self.decoder.output_channels * (h_out // PATCH) * (w_out // PATCH)

    def into_first_conv(self, x, state):
        # the buffer is shaped like the patches: x's every other row and column gives their N, T, H and W
        body = self.encoder.conv1.buffer(state, bordered_like(state, x[:, :, :, ::PATCH, ::PATCH]))
        patchify_into(interior(state, body), x, PATCH)
        return body


__all__ = ["Wan22VAEModel"]
