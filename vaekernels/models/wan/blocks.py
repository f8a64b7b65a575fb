"""The Wan2.2 VAE's own pieces: the 2x2 patchify, the parameter-free stage shortcuts as schedule rules, and the
encoder and decoder stages that hold them (the official ``Down_ResidualBlock`` / ``Up_ResidualBlock`` keys).

The shortcuts' first-frame rules (shared/wan22_vae.md, last section): AvgDown3D's front padding is
``factor_t - 1`` zero frames in front of the whole clip, and the frames of a chunk that do not fill a group wait
in the state for the next one (as the temporal downsampler's do); DupUp3D drops the clip's first
``factor_t - 1`` frames. Each shortcut is handed to its stage's last op as that op's residual, so it is added
in the op's epilogue: the encoder's stride-2 convs and the decoder's upsample convs.
"""
from __future__ import annotations

from torch import nn

from ... import ops
from ...layers import Resample, ResidualBlock, bordered, interior, last_frames


def patchify_into(body, x, patch):
    """Copy video frames ``x`` ``[N, C, T, H, W]`` into ``body`` ``[N, C*p*p, T, H/p, W/p]`` (any strides), channel
    ``c*p*p + r*p + q`` holding pixel ``(p*h + q, p*w + r)`` of channel ``c``: one strided copy, the layout
    change into channels-last that the video makes anyway."""
    n, c, t, h, w = x.shape
    pixels = x.unflatten(3, (h // patch, patch)).unflatten(5, (w // patch, patch))  # [N, C, T, h, q, w, r]
    body.unflatten(1, (c, patch, patch)).copy_(pixels.permute(0, 1, 6, 4, 2, 3, 5))
    return body


def unpatchify_into(out, y, patch):
    """The inverse: ``y`` ``[N, C*p*p, T, h, w]`` into the video frames ``out`` ``[N, C, T, p*h, p*w]``."""
    n, c, t, h, w = out.shape
    pixels = out.unflatten(3, (h // patch, patch)).unflatten(5, (w // patch, patch))  # [N, C, T, h, q, w, r]
    pixels.copy_(y.unflatten(1, (c, patch, patch)).permute(0, 1, 4, 5, 3, 6, 2))
    return out


class AvgDownShortcut(nn.Module):
    """The official ``AvgDown3D(in, out, factor_t, factor_s)`` over a chunked clip (no parameters)."""

    def __init__(self, in_channels, out_channels, factor_t, factor_s):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.identity = factor_t == factor_s == 1 and in_channels == out_channels

    def forward(self, x, state):
        if self.identity:
            return x
        x = interior(state, x)  # in a bordered band (layers.bands), its 2x2 blocks pair band rows
        pending = state.get(self)  # None on the clip's first chunk, then the frames that wait for their group
        zeros = self.factor_t - 1 if pending is None else 0
        cache = pending if pending is not None and pending.shape[2] else None
        y = ops.avg_down3d(x, cache=cache, zeros=zeros, factor_t=self.factor_t, factor_s=self.factor_s,
                           out_channels=self.out_channels)
        frames = 0 if cache is None else cache.shape[2]
        left = zeros + frames + x.shape[2] - self.factor_t * y.shape[2]
        state.put(self, last_frames(cache, x, left))
        return bordered(state, y)


class DupUpShortcut(nn.Module):
    """The official ``DupUp3D(in, out, factor_t, factor_s)`` over a chunked clip (no parameters)."""

    def __init__(self, in_channels, out_channels, factor_t, factor_s):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s

    def forward(self, x, state):
        first = state.get(self) is None
        state.put(self, True)
        return ops.dup_up3d(x, factor_t=self.factor_t, factor_s=self.factor_s, out_channels=self.out_channels,
                            drop=self.factor_t - 1 if first else 0)


class DownStage(nn.Module):
    """``Down_ResidualBlock``: ``mult`` ResidualBlocks (the first changes the channels), a Resample unless it is the
    last stage, and the AvgDown3D shortcut of the stage's input added to its output."""

    def __init__(self, in_dim, out_dim, dropout, mult, temperal_downsample, down_flag):
        super().__init__()
        self.avg_shortcut = AvgDownShortcut(in_dim, out_dim, 2 if temperal_downsample else 1, 2 if down_flag else 1)
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(mult)]
        if down_flag:
            blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)

    def forward(self, x, state):
        skip = self.avg_shortcut(x, state)  # at the output's size: smaller than x, which is dropped below
        *blocks, last = self.downsamples
        for block in blocks:
            x = block(x, state)
        if isinstance(last, Resample):
            return last(x, state, residual=skip)
        return last(x, state, extra=skip)


class UpStage(nn.Module):
    """``Up_ResidualBlock``: ``mult`` ResidualBlocks, a Resample that keeps the channels unless it is the last
    stage, and then the DupUp3D shortcut of the stage's input added to its output (the last stage has none)."""

    def __init__(self, in_dim, out_dim, dropout, mult, temperal_upsample, up_flag):
        super().__init__()
        self.avg_shortcut = DupUpShortcut(in_dim, out_dim, 2 if temperal_upsample else 1, 2) if up_flag else None
        blocks = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(mult)]
        if up_flag:
            blocks.append(Resample(out_dim, "upsample3d" if temperal_upsample else "upsample2d", up_channels=out_dim))
        self.upsamples = nn.ModuleList(blocks)

    @property
    def resample(self):
        return self.upsamples[-1] if self.avg_shortcut is not None else None

    def body(self, x, state):
        """The ResidualBlocks: everything before the resample."""
        for block in self.upsamples[:-1] if self.resample else self.upsamples:
            x = block(x, state)
        return x

    def finish(self, h, x, state):
        """The resample of ``h`` (the body's output) with the shortcut of ``x`` (the frames of the stage's input
        that ``h`` came from) added; ``h`` itself for the last stage."""
        if self.resample is None:
            return h
        return self.resample(h, state, residual=self.avg_shortcut(x, state))

    def forward(self, x, state):
        return self.finish(self.body(x, state), x, state)
