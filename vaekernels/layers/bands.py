"""A frame split over the ranks of a process group by bands of rows, and the exchanges between the bands.

Each rank holds a band of rows of every activation (rank 0 the top one). The RMS norm, the 1x1 and time convs and the
temporal resamplers work per position, so a band needs nothing of its neighbours there; a layer whose kernel spans
rows asks for ``halo`` rows of its neighbours around its band first, and the attention gathers every band's keys and
values (``gather_rows``). Every exchange waits at most ``timeout`` seconds for a peer, then raises ``PeerError``: a
rank that died or stalled stops the others instead of hanging them (on NCCL the process group's own timeout and
watchdog apply as well).
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from .state import CHANNELS_LAST


class PeerError(RuntimeError):
    """Another rank of the split did not take part in an exchange within the timeout, or its connection broke."""


class Bands:
    """This rank's place in a split by bands of rows over ``group``, for one encode or decode."""

    def __init__(self, group, timeout: float):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.timeout = datetime.timedelta(seconds=timeout)

    def _peer(self, rank):
        return dist.get_global_rank(self.group, rank)

    def _wait(self, works, what):
        for work in works:
            try:
                work.wait(self.timeout)
            except RuntimeError as e:  # gloo and NCCL raise RuntimeError (or a subclass) for a lost or late peer
                raise PeerError(f"vaekernels: rank {self.rank} of {self.world} waited {self.timeout.total_seconds():g}"
                                f" s at most for {what} and gave up (a rank died, stalled or left the split): {e}"
                                ) from e

    def halo(self, x: torch.Tensor, top: int, bottom: int, edges: bool = True) -> torch.Tensor:
        """``x`` (this band, ``[N, C, T, rows, W]``) with ``top`` rows of the band above and ``bottom`` rows of the
        band below around it, as a new channels-last tensor. At the frame's top and bottom edges: zero rows when
        ``edges`` (a conv's zero padding), else none."""
        n, c, t, h, w = x.shape
        above = top if self.rank > 0 or edges else 0
        below = bottom if self.rank < self.world - 1 or edges else 0
        out = torch.empty(n, c, t, above + h + below, w, dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST)
        out[:, :, :, above:above + h].copy_(x)
        sends, recvs, works = [], [], []
        # the rows a neighbour needs go out first: every rank posts its sends before it waits on a receive
        for peer, rows, region in ((self.rank - 1, bottom, slice(0, bottom)), (self.rank + 1, top, slice(h - top, h))):
            if rows and 0 <= peer < self.world:
                sends.append(x[:, :, :, region].contiguous())
                works.append(dist.isend(sends[-1], self._peer(peer), group=self.group))
        for peer, rows, at in ((self.rank - 1, above, 0), (self.rank + 1, below, above + h)):
            if not rows:
                continue
            if 0 <= peer < self.world:
                recvs.append((x.new_empty(n, c, t, rows, w), at))
                works.append(dist.irecv(recvs[-1][0], self._peer(peer), group=self.group))
            else:
                out[:, :, :, at:at + rows].zero_()
        self._wait(works, "the halo rows of its neighbours")
        for rows, at in recvs:
            out[:, :, :, at:at + rows.shape[3]].copy_(rows)
        return out

    def gather_rows(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every band's ``x`` (equal in every dim but ``dim``, where bands may differ in size) concatenated along
        ``dim`` in rank order, on every rank."""
        sizes = torch.zeros(self.world, dtype=torch.int64, device=x.device)
        sizes[self.rank] = x.shape[dim]
        self._all_reduce(sizes)
        sizes = sizes.tolist()
        most = max(sizes)
        padded = x.new_zeros(*x.shape[:dim], most, *x.shape[dim + 1:])
        padded.narrow(dim, 0, x.shape[dim]).copy_(x)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._wait([dist.all_gather(parts, padded, group=self.group, async_op=True)], "the other bands' rows")
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)

    def _all_reduce(self, t):
        self._wait([dist.all_reduce(t, group=self.group, async_op=True)], "the other bands' sizes")
