"""Per-call causal state and the frame helpers the layers share.

Modules keep no state between calls. Each forward takes a ``CausalState`` created per
encode/decode call, which holds what a layer must remember from one chunk to the next: the
last input frames of every causal conv, the pending frames of a temporal downsampler, and
whether a temporal resampler has seen the clip's first frame. When a frame is split over devices, it also holds
this rank's ``Bands`` (layers whose kernels span rows exchange rows with the neighbouring bands; see ``bands``).
"""
from __future__ import annotations

import torch

CHANNELS_LAST = torch.channels_last_3d


class CausalState:
    """Per-call causal state, keyed by the layer that owns each entry."""

    def __init__(self, bands=None):
        self.bands = bands  # this rank's Bands when the frame is split over a process group, else None
        self._entries = {}
        self._handed = {}  # conv -> (history view, body view) of the buffer it handed out for this chunk

    def get(self, owner):
        return self._entries.get(owner)

    def put(self, owner, value):
        self._entries[owner] = value

    def hand_out(self, conv, front, body):
        self._handed[conv] = (front, body)

    def take_handed(self, conv):
        return self._handed.pop(conv, None)

    def snapshot(self):
        """What ``restore`` needs to undo a chunk that failed part-way: layers replace their entries, never
        write into them, so the entries themselves are kept."""
        return dict(self._entries)

    def restore(self, snapshot):
        self._entries = dict(snapshot)
        self._handed.clear()


def empty_frames(like, channels, frames):
    """An uninitialised channels-last ``[N, channels, frames, H, W]`` tensor shaped after ``like``."""
    n, _, _, h, w = like.shape
    return torch.empty(n, channels, frames, h, w, dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)


def last_frames(cache, x, n):
    """The last ``n`` frames of the sequence ``cache`` (zero frames when None) then ``x`` (a small copy, <= 2
    frames)."""
    t = x.shape[2]
    if t >= n:
        return x[:, :, t - n:].clone(memory_format=CHANNELS_LAST)
    tail = empty_frames(x, x.shape[1], n)
    if cache is None:
        tail[:, :, : n - t].zero_()
    else:
        tail[:, :, : n - t].copy_(cache[:, :, cache.shape[2] - (n - t):])
    tail[:, :, n - t:].copy_(x)
    return tail
