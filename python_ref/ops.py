"""The ops' definitions, computed in float64: the one oracle per op that every backend's tests compare against.

Each is written from its op's docstring (vaekernels/ops/) with explicit copies and loops where that is
clearest, independently of every backend. Inputs of any dtype are upcast; the results are float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["causal_conv3d", "rms_norm_silu", "spatial_attention", "upsample_conv2d", "avg_down3d", "dup_up3d"]


def _f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.double()


def _sequence(x: torch.Tensor, cache: Optional[torch.Tensor], zeros: int) -> torch.Tensor:
    """`zeros` zero frames, then the cache, then x, joined along time in float64."""
    parts = [x.new_zeros(x.shape[0], x.shape[1], zeros, *x.shape[3:]).double()]
    if cache is not None:
        parts.append(cache.double())
    return torch.cat(parts + [x.double()], dim=2)


def causal_conv3d(x, weight, bias=None, cache=None, stride=(1, 1, 1), padding=(0, 0, 0), residual=None):
    """2*pt zero frames (fewer by the cache's frames) in front, then the cache and x; ph, pw zeros on both sides in
    space; a plain conv; plus the residual."""
    pt, ph, pw = padding
    frames = 0 if cache is None else cache.shape[2]
    seq = F.pad(_sequence(x, cache, max(0, 2 * pt - frames)), (pw, pw, ph, ph))
    y = F.conv3d(seq, weight.double(), _f64(bias), tuple(stride))
    return y if residual is None else y + residual.double()


def rms_norm_silu(x, gamma, silu=True, eps=1e-12):
    """x / max(||x||_2 over dim 1, eps) * sqrt(C) * gamma, then SiLU."""
    x = x.double()
    c = x.shape[1]
    y = x / x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(eps) * math.sqrt(c) \
        * gamma.double().reshape(1, c, *[1] * (x.dim() - 2))
    return y * torch.sigmoid(y) if silu else y


def spatial_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v over [N, L, D]."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def upsample_conv2d(x, weight, bias=None, residual=None):
    """Every frame repeated 2x in H and W, then a 3x3 conv with padding 1; plus the residual."""
    up = x.double().repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    frames = [F.conv2d(up[:, :, i], weight.double(), _f64(bias), padding=1) for i in range(x.shape[2])]
    y = torch.stack(frames, dim=2) if frames else up.new_zeros(x.shape[0], weight.shape[0], 0, *up.shape[3:])
    return y if residual is None else y + residual.double()


def avg_down3d(x, cache=None, zeros=0, factor_t=1, factor_s=1, out_channels=None):
    """Output frame j: the block entries k (channel k // factor at block offset k % factor, offsets in t, h, w
    order) of sequence frames j*ft .. j*ft+ft-1, groups of C*factor/out consecutive entries averaged."""
    seq = _sequence(x, cache, zeros)
    ft, fs = factor_t, factor_s
    m = seq.shape[2] // ft
    entries = [seq[:, :, a:m * ft:ft, b::fs, e::fs] for a in range(ft) for b in range(fs) for e in range(fs)]
    blocks = torch.stack(entries, dim=2)  # [N, C, factor, M, H/fs, W/fs]: entry k = c*factor + q
    n, c, factor = blocks.shape[:3]
    return blocks.reshape(n, out_channels, c * factor // out_channels, *blocks.shape[3:]).mean(dim=2)


def dup_up3d(x, factor_t=1, factor_s=1, out_channels=None, drop=0):
    """Output channel o at block offset q of input position (t, i, j): input channel (o*factor + q) // repeats
    there, repeats = out*factor/C; the first `drop` output frames left out."""
    x = x.double()
    n, c, t, h, w = x.shape
    ft, fs = factor_t, factor_s
    factor = ft * fs * fs
    repeats = out_channels * factor // c
    out = x.new_zeros(n, out_channels, t * ft, h * fs, w * fs)
    for a in range(ft):
        for b in range(fs):
            for e in range(fs):
                q = (a * fs + b) * fs + e
                source = torch.tensor([(o * factor + q) // repeats for o in range(out_channels)])
                out[:, :, a::ft, b::fs, e::fs] = x[:, source]
    return out[:, :, drop:]
