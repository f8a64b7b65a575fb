"""The blocks the Wan VAEs share: modules that hold parameters (with upstream's state-dict keys) and call ops."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .bands import BORDER
from .conv import CausalConv3d, RMSNorm, norm_into_conv
from .state import CHANNELS_LAST, empty_frames, last_frames


class ResidualBlock(nn.Module):
    def __init__(self, in_dim, out_dim, dropout=0.0):
        super().__init__()
        # indices 0..6 mirror upstream's Sequential so that state-dict keys match
        self.residual = nn.ModuleList([
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        ])
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x, state, extra=None):
        """``extra`` (the output's shape), when given, is added to the block's output (with its own shortcut, in
        conv2's residual)."""
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(norm_into_conv(norm1, conv1, x, state), state)
        # dropout is the identity at inference, which is all this package runs
        skip = x if self.shortcut is None else self.shortcut(x, state)
        if extra is not None:
            skip = skip + extra
        h = norm_into_conv(norm2, conv2, h, state)  # rebinding h drops conv1's output: not alive during conv2
        return conv2(h, state, residual=skip)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of each frame on its own."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x, state):
        n, c, t, h, w = x.shape
        normed = ops.rms_norm_silu(x, self.norm.gamma, silu=False)
        qkv = ops.causal_conv3d(normed, self.to_qkv.weight.unsqueeze(2), self.to_qkv.bias)
        rows = qkv.permute(0, 2, 3, 4, 1).reshape(n * t, h * w, 3 * c)  # a view in channels-last
        q, k, v = rows.split(c, dim=-1)
        if state.bands is not None:  # a band's queries attend to the whole frame: every band's keys and values
            band = rows[:, BORDER * w:(h - BORDER) * w, c:]
            k, v = state.bands.gather_rows(band, dim=1).split(c, dim=-1)
        a = ops.spatial_attention(q, k, v).view(n, t, h, w, c).permute(0, 4, 1, 2, 3)
        return ops.causal_conv3d(a, self.proj.weight.unsqueeze(2), self.proj.bias, residual=x)


class Resample(nn.Module):
    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim, mode, up_channels=None):
        """``up_channels``: output channels of an upsampler's conv (Wan2.1 halves them, the default; Wan2.2 keeps
        them)."""
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        up = mode.startswith("up")
        # index 0 is upstream's parameter-free upsample / zero-pad step, done here inside the ops
        self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, up_channels or dim // 2, 3, padding=1) if up
                                      else nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x, state, residual=None):
        """``residual`` (the output's shape), when given, is added by the resample's last op."""
        conv = self.resample[1]
        if self.mode == "upsample3d":
            x = self._time_upsample(x, state)
        bands = state.bands
        if bands is not None:  # the conv's border taps read the neighbours' edge rows (layers.bands)
            bands.refresh(x)
        if self.mode.startswith("up"):
            y = ops.upsample_conv2d(x, conv.weight, conv.bias, residual=residual)
            # a bordered band of r + 2 rows upsampled is one of 2r + 2 rows and an extra row on each side
            return y if bands is None else y[:, :, :, 1:-1].contiguous(memory_format=CHANNELS_LAST)
        space = residual if self.mode == "downsample2d" else None
        # output row i reads input rows 2i .. 2i+2 (the 4x4 weight's first row and column are zero); of a bordered
        # band of 2r + 2 rows, r + 2 rows whose band rows read the band's own rows and the border below: a padding
        # of 2 rows (on top it aligns the taps; below it reaches only the bottom border row's output)
        x = ops.causal_conv3d(x, self._stride2_weight(), conv.bias, stride=(1, 2, 2),
                              padding=(0, 1 if bands is None else 2, 1), residual=space)
        if self.mode == "downsample3d":
            x = self._time_downsample(x, state, residual)
        return x

    def _stride2_weight(self):
        """Zero padding on the right and bottom only, then a stride-2 3x3 conv, equals a stride-2
        4x4 conv with padding 1 whose first row and column of weights are zero. That weight is one
        buffer per module, compared with the 3x3 weight at every call (a read of a few MB) and
        rewritten only where they differ: the 3x3 weight may have changed in ways no key notices
        (writes through ``.data``), and a write bumps the buffer's version, which makes the kernels
        that prepare it once check it again (csrc/causal_conv3d.cpp, derived_weight). It is never an
        inference tensor (which a later call outside inference mode could not refill). When autograd records
        the call, the 4x4 weight is made from the 3x3 one each call (a graph to the 3x3 weight)."""
        w = self.resample[1].weight
        if torch.is_grad_enabled() and w.requires_grad:
            return nn.functional.pad(w, (1, 0, 1, 0)).unsqueeze(2).contiguous(memory_format=CHANNELS_LAST)
        w = w.detach()
        w4 = getattr(self, "_w4", None)
        if w4 is None or w4.shape[:2] != w.shape[:2] or w4.dtype != w.dtype or w4.device != w.device:
            with torch.inference_mode(False):
                w4 = self._w4 = torch.zeros(*w.shape[:2], 1, 4, 4, dtype=w.dtype, device=w.device
                                            ).contiguous(memory_format=CHANNELS_LAST)
        if not torch.equal(w4[:, :, 0, 1:, 1:], w):
            w4[:, :, 0, 1:, 1:].copy_(w)
        return w4

    def _time_upsample(self, x, state):
        """Frame 0 of the clip passes as it is; every later frame becomes two (channel halves of the
        time conv, whose history starts with zeros, not with frame 0)."""
        first = state.get(self) is None
        state.put(self, True)
        lead = 1 if first else 0
        x_tc = x[:, :, lead:]
        c, t = x_tc.shape[1], x_tc.shape[2]
        out = empty_frames(x, c, lead + 2 * t)
        if first:
            out[:, :, 0].copy_(x[:, :, 0])
        if t:
            tc = self.time_conv
            cache = tc.cache_for(state, x_tc)
            for s in range(2):  # output frame 2t+s takes channels [s*C, (s+1)*C) of the time conv
                ops.causal_conv3d(x_tc, tc.weight[s * c:(s + 1) * c], tc.bias[s * c:(s + 1) * c], cache=cache,
                                  padding=tc.padding, out=out[:, :, lead + s::2])
            state.put(tc, last_frames(cache, x_tc, tc.history))
        return out

    def _time_downsample(self, x, state, residual=None):
        """Output frame 0 is input frame 0; output j >= 1 is the time conv over input frames
        2j-2, 2j-1, 2j. Frames not yet used by a window wait in the state for the next chunk."""
        pending = state.get(self)
        lead = 1 if pending is None else 0
        c = 0 if pending is None else pending.shape[2]
        t = x.shape[2]
        tc = self.time_conv
        n_conv = ops.conv_output_shape(x.shape, tc.weight.shape, c, tc.stride, tc.padding)[2]
        out = empty_frames(x, x.shape[1], lead + n_conv)
        if lead and t:
            if residual is None:
                out[:, :, 0].copy_(x[:, :, 0])
            else:
                out[:, :, 0].copy_(x[:, :, 0] + residual[:, :, 0])  # one frame; add(out=) has no backward
        if n_conv:
            ops.causal_conv3d(x, tc.weight, tc.bias, cache=pending, stride=tc.stride, out=out[:, :, lead:],
                              residual=None if residual is None else residual[:, :, lead:lead + n_conv])
        left = c + t - 2 * n_conv
        empty = x[:, :, :0] if pending is None else pending
        state.put(self, last_frames(empty, x, left) if left else empty[:, :, :0])
        return out
