"""A frame split over the ranks of a process group by bands of rows, and the exchanges between the bands.

Each rank holds a band of rows of every activation (rank 0 the top one), with one border row above and below it: a
bordered band ``[N, C, T, 1 + rows + 1, W]``. Every layer computes all of its rows, borders included, so that the
layers' own kernels run on the band as on a frame of ``rows + 2`` rows; what a layer makes in its border rows is
wrong (its taps there reach past the band) and nothing reads it: a layer whose kernel spans rows first has its
input's border rows written with its neighbours' edge rows (``refresh``: in place, in the buffer the conv reads, as
the history frames are in time), after which its band rows are exact; the per-position layers (the RMS norm, the 1x1
and time convs, the temporal resamplers) need nothing of the neighbours; the attention gathers every band's keys and
values, of the band rows only (``gather_rows``). A 3x3 conv thus keeps the bordered layout, a stride-2 downsample
of ``2r + 2`` rows makes ``r + 2`` (its border taps shifted by a padding of 2) and a 2x upsample of ``r + 2`` makes
``2r + 4``, cut to ``2r + 2``.

On gloo every exchange waits at most ``timeout`` seconds for a peer, then raises ``PeerError``: a rank that died or
stalled stops the others instead of hanging them. On NCCL the process group's own timeout and watchdog bound the
waits (a wait with a timeout there blocks the CPU until the GPU has done the exchange, at every exchange). After a
``PeerError`` the group is in an unknown state (exchanges may be pending): make a new one.
"""
from __future__ import annotations

import datetime
from typing import Optional

import torch
import torch.distributed as dist

from .state import CHANNELS_LAST


class PeerError(RuntimeError):
    """Another rank of the split did not take part in an exchange within the timeout, or its connection broke."""


BORDER = 1  # rows around a band: the reach of the models' 3x3 kernels


class Bands:
    """This rank's place in a split by bands of rows over ``group``, for one encode or decode."""

    def __init__(self, group, timeout: float):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError("group: this process is not one of the group's ranks")
        self.timeout = datetime.timedelta(seconds=timeout)
        # NCCL's wait with a timeout blocks the CPU until the GPU has done the exchange (no work queued behind it);
        # there the process group's own timeout and watchdog bound a wait
        self.waits = {} if dist.get_backend(group) == "nccl" else {"timeout": self.timeout}

    def _peer(self, rank):
        return dist.get_global_rank(self.group, rank)

    def _exchange(self, ops, what):
        """The point-to-point ``ops`` (``(dist.isend or dist.irecv, tensor, rank)``) posted together, then waited
        for: on NCCL, sends posted before the matching receives of a rank that also sends could wait on each other."""
        if ops:
            p2p = [dist.P2POp(op, tensor, self._peer(rank), self.group) for op, tensor, rank in ops]
            self._wait(dist.batch_isend_irecv(p2p), what)

    def _wait(self, works, what):
        for work in works:
            try:
                work.wait(**self.waits)
            except RuntimeError as e:  # gloo and NCCL raise RuntimeError (or a subclass) for a lost or late peer
                raise PeerError(f"vaekernels: rank {self.rank} of {self.world} waited {self.timeout.total_seconds():g}"
                                f" s at most for {what} and gave up (a rank died, stalled or left the split): {e}"
                                ) from e

    def refresh(self, t: torch.Tensor) -> torch.Tensor:
        """Write ``t``'s border rows in place (``t``: a bordered band ``[N, C, T, 1 + rows + 1, W]``, any strides): the
        top one is the band above's last row, the bottom one the band below's first (zeros at the frame's top and
        bottom edges: a conv's padding there). Returns ``t``."""
        h = t.shape[3]
        ops, recvs = [], []
        for peer, edge, border in ((self.rank - 1, 1, 0), (self.rank + 1, h - 2, h - 1)):
            if 0 <= peer < self.world:
                ops.append((dist.isend, t[:, :, :, edge].contiguous(), peer))
                recvs.append((torch.empty_like(ops[-1][1]), border))
                ops.append((dist.irecv, recvs[-1][0], peer))
            else:
                t[:, :, :, border].zero_()
        self._exchange(ops, "the border rows of its neighbours")
        for rows, at in recvs:
            t[:, :, :, at].copy_(rows)
        return t

    def gather_rows(self, x: torch.Tensor, dim: int, dst: Optional[int] = None) -> Optional[torch.Tensor]:
        """Every band's ``x`` (equal in every dim but ``dim``, where bands may differ in size) concatenated along
        ``dim`` in rank order, on every rank; with ``dst``, on that rank only (the others get None)."""
        sizes = torch.zeros(self.world, dtype=torch.int64, device=x.device)
        sizes[self.rank] = x.shape[dim]
        self.all_reduce(sizes)
        sizes = sizes.tolist()
        if dst is not None:
            return self._gather_to(x.contiguous(), dim, dst, sizes)
        most = max(sizes)
        padded = x.new_zeros(*x.shape[:dim], most, *x.shape[dim + 1:])
        padded.narrow(dim, 0, x.shape[dim]).copy_(x)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._wait([dist.all_gather(parts, padded, group=self.group, async_op=True)], "the other bands' rows")
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)

    def _gather_to(self, x, dim, dst, sizes):
        if self.rank != dst:
            self._exchange([(dist.isend, x, dst)], f"rank {dst} to take its rows")
            return None
        parts = [x if rank == dst else x.new_empty(*x.shape[:dim], size, *x.shape[dim + 1:])
                 for rank, size in enumerate(sizes)]
        self._exchange([(dist.irecv, part, rank) for rank, part in enumerate(parts) if rank != dst],
                       "the other bands' rows")
        return torch.cat(parts, dim=dim)

    def all_reduce(self, t):
        """``t`` summed over the ranks, in place."""
        self._wait([dist.all_reduce(t, group=self.group, async_op=True)], "the other ranks' counts")


def interior(state, t: torch.Tensor) -> torch.Tensor:
    """The band rows of ``t`` (a view without its border rows) when the frame is split into bands, else ``t``."""
    return t if state.bands is None else t[:, :, :, BORDER:t.shape[3] - BORDER]


def bordered_like(state, x: torch.Tensor) -> torch.Tensor:
    """A stand-in shaped like ``x`` with border rows added when the frame is split into bands (for its shape, dtype
    and device only: ``CausalConv3d.buffer``), else ``x``."""
    if state.bands is None:
        return x
    n, c, t, h, w = x.shape
    return x[:, :, :, :1].expand(n, c, t, h + 2 * BORDER, w)


def bordered(state, y: torch.Tensor) -> torch.Tensor:
    """``y`` (band rows only) with zero border rows around it, as a new channels-last tensor, when the frame is split
    into bands; else ``y``."""
    if state.bands is None:
        return y
    n, c, t, h, w = y.shape
    out = torch.empty(n, c, t, h + 2 * BORDER, w, dtype=y.dtype, device=y.device, memory_format=CHANNELS_LAST)
    out[:, :, :, :BORDER].zero_()
    out[:, :, :, BORDER + h:].zero_()
    out[:, :, :, BORDER:BORDER + h].copy_(y)
    return out
