"""Encode and decode split over the ranks of a process group by bands of rows (``group=`` on the models' calls).

Bands are whole latent rows, as even as they go (``band_rows``), so every stride-2 downsample and 2x upsample splits
evenly; every rank runs the single process's chunk schedule (planned for the whole frame) on its band, so that its
activations are its band's share of the single process's, and the layers exchange
the rows their kernels need (``layers.bands``). The result is the single-process result: the same ops on the same
numbers, no blending at seams.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .. import engine
from ..layers.bands import Bands

DEFAULT_TIMEOUT_S = 300.0  # how long a rank waits for another in any exchange before it raises
OUTPUTS = ("all", "band")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def band_rows(model, height: int, world_size: int, latent: bool = False) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: the rows of a frame ``height`` rows tall that each of ``world_size`` ranks holds, rank
    0 the top band. Bands are whole latent rows; the first ``h_lat % world_size`` ranks get one latent row more than
    the others, and the bottom band also holds the video rows past the last whole latent row (a height that is not a
    multiple of the space factor). ``latent``: ``height`` counts latent rows and so do the bands."""
    for name, v in (("height", height), ("world_size", world_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    h_lat = height if latent else model.latent_size(height, height)[0]
    if world_size > h_lat:
        raise ValueError(f"a frame of {h_lat} latent rows cannot be split over {world_size} ranks: each rank holds at "
                         f"least one latent row")
    f = 1 if latent else model.spec.space_factor
    base, extra = divmod(h_lat, world_size)
    rows, start = [], 0
    for rank in range(world_size):
        end = start + base + (rank < extra)
        rows.append((f * start, f * end if rank < world_size - 1 else height))
        start = end
    return rows


def check_options(group, max_memory=None, band_input=False, output="all", timeout=None) -> None:
    """Refuse a split's options without a ``group``, and ``max_memory`` with one (it does not plan split calls yet):
    the models' calls and the wrappers' constructors check alike."""
    if group is None:
        if band_input is not False or output != "all" or timeout is not None:
            raise ValueError("band_input, output and timeout are options of a split call: pass group= too")
    elif max_memory is not None:
        raise ValueError("max_memory does not plan split calls yet: pass chunk_frames, or neither (the default budget, "
                         "planned for the whole frame)")


class Split:
    """One call's split over ``group``: this rank's band of the input, the schedule every rank runs and the output's
    assembly. ``band_input``: each rank passes its own band (``band_rows``) instead of the whole input; ``output``:
    "all" (every rank returns the whole result), "band" (each its band) or a rank (that rank the whole, the others
    None)."""

    def __init__(self, model, group, band_input: bool, output, timeout: Optional[float]):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("group: torch.distributed is not initialised (call torch.distributed.init_process_group "
                             "first, e.g. under torchrun)")
        if not isinstance(group, dist.ProcessGroup):
            raise ValueError(f"group must be a torch.distributed ProcessGroup (e.g. torch.distributed.group.WORLD), "
                             f"got {group!r}")
        if not isinstance(band_input, bool):
            raise ValueError(f"band_input must be True or False, got {band_input!r}")
        world = dist.get_world_size(group)
        if not (output in OUTPUTS or isinstance(output, int) and not isinstance(output, bool) and 0 <= output < world):
            raise ValueError(f"output must be one of {OUTPUTS} or a rank of the group (0 to {world - 1}), got "
                             f"{output!r}")
        timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model, self.band_input, self.output = model, band_input, output
        self.device = next(model.parameters()).device  # where the exchanges' tensors live (NCCL: the GPU)
        self.bands = Bands(group, float(timeout))

    def agreed(self, check, name: str):
        """``check()`` (this rank's own checks of its input), then whether any rank's failed, learnt by every rank:
        the failing rank raises its own error, the others a ValueError naming it; all before any work (a rank that
        raised alone would leave the others waiting in their first exchange)."""
        try:
            result, error = check(), None
        except (ValueError, TypeError, RuntimeError) as e:
            result, error = None, e
        failed = torch.zeros(self.bands.world, dtype=torch.int64, device=self.device)
        failed[self.bands.rank] = error is not None
        self.bands.all_reduce(failed)
        if error is not None:
            raise error
        bad = [r for r, f in enumerate(failed.tolist()) if f]
        if bad:
            raise ValueError(f"{name}: rank {bad[0]} of the split refused its input (its own error says why); nothing "
                             f"was computed")
        return result

    def band(self, x: torch.Tensor, latent: bool, name: str) -> torch.Tensor:
        """This rank's band of ``x`` (``[N, C, T, H, W]``, checked), after checking that every rank passed the same
        input (the same values, when each passes the whole) and that it splits as asked: a ValueError on every rank,
        before any work."""
        bands = self.bands
        if x.dtype not in _DTYPES:
            raise ValueError(f"{name}: a split call takes {_DTYPES} inputs, got {x.dtype}")
        mine = torch.tensor([*x.shape, _DTYPES.index(x.dtype), 0], dtype=torch.float64, device=self.device)
        if not self.band_input:  # a sum of the values: ranks passing different inputs would stitch their bands together
            mine[-1] = x.sum().to(self.device)  # in x's dtype: sum(dtype=float64) makes a float64 copy of x first
        every = bands.gather_rows(mine[None], dim=0).tolist()
        rank, world = bands.rank, bands.world
        shapes = [[int(v) for v in m[:6]] for m in every]
        odd = [r for r, m in enumerate(shapes) if m[:3] + m[4:] != shapes[0][:3] + shapes[0][4:]]
        if odd:
            raise ValueError(f"{name}: every rank of the split must pass the same N, C, T, W and dtype; rank "
                             f"{odd[0]} passed shape {tuple(shapes[odd[0]][:5])} {_DTYPES[shapes[odd[0]][5]]}, rank 0 "
                             f"{tuple(shapes[0][:5])} {_DTYPES[shapes[0][5]]}")
        heights = [m[3] for m in shapes]
        if not self.band_input and len(set(heights)) > 1:
            raise ValueError(f"{name}: every rank must pass the whole input (band_input=False), got heights "
                             f"{heights} on ranks 0 to {world - 1}")
        sums = [m[6] for m in every]
        if not self.band_input and any(s != sums[0] and not (s != s and sums[0] != sums[0]) for s in sums):
            raise ValueError(f"{name}: every rank must pass the same whole input (band_input=False), but the ranks' "
                             f"values differ (their sums: {sums})")
        total = sum(heights) if self.band_input else heights[0]
        if not latent:  # the model's own size rules first, on every rank alike
            self.model.check_size(total, x.shape[4], name)
        self.rows = band_rows(self.model, total, world, latent)
        self.height = total
        start, end = self.rows[rank]
        if not self.band_input:
            return x[:, :, :, start:end]
        wrong = [r for r, (a, b) in enumerate(self.rows) if heights[r] != b - a]
        if wrong:
            r = wrong[0]
            raise ValueError(f"{name}: with band_input=True rank {r} passes rows {self.rows[r]} of the {total} "
                             f"(model.band_rows({total}, {world}{', latent=True' if latent else ''})), a band of "
                             f"{self.rows[r][1] - self.rows[r][0]} rows; it passed {heights[r]}")
        return x

    def schedule(self, kind: str, x: torch.Tensor, chunk_frames: Optional[int]):
        """``(chunk_frames, piece_frames)`` that every rank runs: the single process's, planned for the whole frame
        (a band's activations are then its share of the single process's; planned for the band, the chunk budget
        would hold as many more frames: 0.66-0.70 of the single process's peak per rank at world size 2, against
        0.54-0.56 where the whole frame's chunking is already the least, full-size Wan2.1 at 9x128x128 and
        17x256x256, float32, 2 Sapphire Rapids cores)."""
        return engine.default_chunking(self.model, kind, x, chunk_frames, rows=self.height)

    def assemble(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        """The call's result from this rank's band of it, as ``output`` says."""
        if self.output == "band":
            return y
        return self.bands.gather_rows(y, dim=3, dst=None if self.output == "all" else self.output)
