"""The schedule: cuts a clip into chunks over time and threads one ``CausalState`` through them.

It knows no model family: it reads the model's ``spec`` (time factor, channels) and calls the steps the
model supplies (``encode_chunk``, ``decode_chunk``; see ``vaekernels.models.base``).

Chunking is only a schedule (see the model specs): every causal conv carries its last frames,
and the temporal resamplers and shortcuts apply their first-frame rules by themselves, so any chunk
length gives the same result up to rounding. Longer chunks make larger, more efficient ops; shorter
ones bound memory. The default picks the longest chunk whose largest activation stays under a
budget: ``VAEKERNELS_CHUNK_MB`` when set, else on CPU 16 MiB for float32 (and at most 4 frames per
encode chunk, ``ENCODE_FRAMES_MAX``) and 32 MiB for other dtypes, and 1 GiB on CUDA; the decoder also runs
its output-resolution layers in pieces of frames under that budget (one latent frame is ``time_factor``
frames there). On CPU a few frames per chunk is the fast choice.
Measured on 2 cores (AMD Zen 3) at 17x128x128 with the Wan2.1 VAE, interleaved in one process: float32 at
16 MiB (2 frames of the first layers' activation) was as fast as at 32 MiB (5 frames) with 0.71x / 0.85x the
encode / decode peak, and at 8 MiB 6-14% slower; bfloat16, whose Winograd tiles are larger (fewer tiles per
frame for its GEMMs), was 1-8% slower at 16-24 MiB than at 32 (10 frames).

When autograd records a call (grad mode, and the input or a parameter requires grad), the schedule runs in graph
mode: each chunk makes its own output tensors instead of writing into buffers of the whole result, the causal state
carries the graph from chunk to chunk (gradients do not depend on the chunking), and each chunk may be checkpointed
(recomputed in backward from a copy of the state it started from; on CPU the heap's free pages go back to the OS
before each recompute, see trim_cpu_heap); without checkpointing the default chunk is the whole clip (_graph_chunk).
Otherwise nothing is recorded.

A whole encode or decode runs inside the backend's memory span: the cpp backend pools CPU blocks of
1 MiB and more there, so each chunk reuses the blocks of the one before (csrc/cpu_pool.cpp).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint as recomputed

from . import envs
from .backends import memory_path, memory_span
from .layers import CausalState

# budget for the largest activation of one chunk, in MiB: per device type, or per device type and dtype
CHUNK_MB = {"cpu": 32, ("cpu", torch.float32): 16, "cuda": 1024}
# and the most video frames an encode's chunk takes where the budget is not set (VAEKERNELS_CHUNK_MB): on CPU in
# float32, each frame more than 4 added 5-10 MiB of peak for a few percent of time (the released Wan2.2's float32
# encode of 17x128x128, 6 / 5 / 4 / 3 frames: 128 / 118 / 112 / 99 MiB; 4 frames against 6, interleaved in one
# process: 2.12 against 2.02 s, medians of 5; Sapphire Rapids, 2026-12-06). Wan2.1's float32 activations are
# larger: its budget holds 2 frames there.
ENCODE_FRAMES_MAX = {("cpu", torch.float32): 4}


def chunk_budget(like: torch.Tensor) -> int:
    """The chunk budget in bytes for activations like ``like`` (its device and dtype)."""
    mb = envs.chunk_mb()
    if mb is None:
        kind = like.device.type
        mb = CHUNK_MB.get((kind, like.dtype), CHUNK_MB.get(kind, CHUNK_MB["cpu"]))
    return int(mb * 2 ** 20)


def budget_frames(kind: str, like: torch.Tensor, frame_bytes: int) -> int:
    """Frames of ``frame_bytes`` each of activations like ``like`` that the chunk budget holds (maybe 0); for an
    encode (``kind``), at most ``ENCODE_FRAMES_MAX`` where the budget is the default."""
    frames = chunk_budget(like) // max(1, frame_bytes)
    capped = kind == "encode" and envs.chunk_mb() is None
    most = ENCODE_FRAMES_MAX.get((like.device.type, like.dtype)) if capped else None
    return frames if most is None else min(frames, most)


def default_chunk_frames(frame_bytes: int, total: int, like: torch.Tensor) -> int:
    """Video frames of ``frame_bytes`` each (at most ``total``, at least one) that an encode's chunk takes."""
    return _chunking("encode", budget_frames("encode", like, frame_bytes), total, 1)[0]


def default_chunking(model, kind: str, x: torch.Tensor, chunk_frames: Optional[int] = None,
                     rows: Optional[int] = None):
    """``(chunk, piece)`` of the schedule of ``kind`` for ``x`` (the encode's video, the decode's latent) by the chunk
    budget (``chunk_frames``: that chunk, the piece for it): ``_chunking``'s rule. ``rows``: for frames of that many
    rows instead of x's (a split's whole frame, so that every rank runs the single process's schedule)."""
    n, _, t, h, w = x.shape
    h = rows or h
    if kind == "encode":
        frame_bytes, f = model.encoder_frame_elements(h, w) * x.element_size(), 1
    else:
        frame_bytes, f = model.decoder_frame_elements(h, w) * x.element_size(), model.spec.time_factor
    return _chunking(kind, budget_frames(kind, x, frame_bytes), t, f, chunk_frames)


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(value, name: str = "max_memory") -> int:
    """A size in bytes from an int (bytes) or a string with a unit ("8GiB", "512 MiB", "2GB")."""
    if isinstance(value, str):
        text = value.strip().lower()
        number = text.rstrip("bkmgtib ")
        unit = text[len(number):].strip()
        try:
            size = float(number) * _UNITS[unit]
        except (ValueError, KeyError):
            size = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        size = value
    else:
        size = None
    if size is None or not (0 < size < float("inf")):
        raise ValueError(f"{name} must be a positive number of bytes or a size such as '8GiB' or '512MB', "
                         f"got {value!r}")
    return int(size)


def format_bytes(size: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size / 2 ** 10:.1f} KiB"


@dataclass(frozen=True)
class MemoryPlan:
    """A chunking of one encode or decode and the memory it is estimated to add above the loaded model."""
    bytes: int  # the estimated peak (the whole output included, or one chunk's when streaming)
    chunk_frames: int  # frames per chunk: video frames for encode, latent frames for decode
    piece_frames: Optional[int]  # decode: output frames its output-resolution layers take at a time


# The peaks of identical runs differ by where the heap happens to put things: 4 runs of the released Wan2.2's bf16
# encode of 9 x 128 x 128 (tests/test_memory_estimate.py) peaked at 72.7-79.5 MB against a fitted 76.5 MB (AMD EPYC
# Zen 3, 2026-12-05). Every estimate adds this much, so that it bounds such runs rather than splitting them.
ALLOCATOR_HEADROOM = 8 * 2 ** 20


def memory_terms(model, kind: str, shape, dtype) -> dict:
    """The sizes the memory estimate of ``kind`` ("encode" or "decode") of an input of ``shape`` is written in:
    ``frame_bytes``, the largest activation per frame (the unit the chunk budget is measured in), and
    ``output_bytes``, the whole result."""
    n, _, t, h, w = shape
    spec, size = model.spec, torch.empty((), dtype=dtype).element_size()
    if kind == "encode":
        frame = model.encoder_frame_elements(h, w)
        out = 2 * spec.z_dim * spec.latent_frames(t) * math.prod(model.latent_size(h, w))
    else:
        frame = model.decoder_frame_elements(h, w)
        out = spec.video_channels * spec.video_frames(t) * math.prod(model.video_size(h, w))
    return dict(frame_bytes=n * frame * size, output_bytes=n * out * size, time_factor=spec.time_factor)


def memory_features(kind: str, chunk: int, piece: Optional[int], terms: dict) -> list:
    """What the transient memory grows with, in bytes: the encoder's chunk of frames of the largest activation,
    one such frame (the causal state at every resolution, which scales like it) and one MiB (what does not scale);
    the decoder's chunk at the output frame rate (its layers below the output resolution run on all of it), its
    piece (the output-resolution layers), one frame and one MiB. ``model.memory_coefficients`` weigh them."""
    frame = terms["frame_bytes"]
    if kind == "encode":
        return [chunk * frame, frame, 2 ** 20]
    return [terms["time_factor"] * chunk * frame, piece * frame, frame, 2 ** 20]


def _chunking(kind: str, units: int, t: int, time_factor: int, chunk: Optional[int] = None):
    """The chunk (``chunk`` when given) and the decoder's piece for a budget of ``units`` frames of the largest
    activation: the one rule the engine runs by and the memory estimate plans with."""
    if kind == "encode":
        return chunk or max(1, min(t, units)), None
    chunk = chunk or max(1, min(t, units // time_factor))
    return chunk, max(1, min(time_factor * chunk, units))


def plan_memory(model, kind: str, shape, dtype, device, *, chunk_frames: Optional[int] = None,
                max_memory=None, streaming: bool = False, input_dtype=None) -> MemoryPlan:
    """The chunking ``kind`` of an input of ``shape`` runs with, and its estimated memory: ``chunk_frames`` when
    given, else the default (the chunk budget), else with ``max_memory`` the longest chunking up to the default
    whose estimate fits (a ValueError before any work when none does). The estimate is the model's measured
    coefficients (``model.memory_coefficients``, those of the kernel path the convs take) applied to
    ``memory_terms``; ``streaming``: only one chunk's output is held (``decode_frames``); an input of another dtype
    than the model's is copied, which counts too."""
    if kind not in ("encode", "decode"):
        raise ValueError(f"kind must be 'encode' or 'decode', got {kind!r}")
    limit = check_chunking(chunk_frames, max_memory)
    n, c, t, h, w = shape
    spec, terms = model.spec, memory_terms(model, kind, shape, dtype)
    f, frame = terms["time_factor"], terms["frame_bytes"]
    size = torch.empty((), dtype=dtype).element_size()
    fixed = n * c * t * h * w * size if kind == "decode" or (input_dtype not in (None, dtype)) else 0
    probe = torch.empty(0, dtype=dtype, device=device)
    paths = model.memory_coefficients
    coef = paths.get(memory_path(probe), paths["default"])[kind]

    def out_bytes(chunk):
        out = terms["output_bytes"]
        if not streaming:
            return out
        # one chunk's output
        if kind == "decode":
            return out // spec.video_frames(t) * min(spec.video_frames(t), f * chunk)
        return out // spec.latent_frames(t) * min(spec.latent_frames(t), 1 + chunk // f)

    def estimate(chunk, piece):
        work = sum(a * b for a, b in zip(coef, memory_features(kind, chunk, piece, terms)))
        return MemoryPlan(int(fixed + out_bytes(chunk) + work + ALLOCATOR_HEADROOM), chunk, piece)

    # the default budget, in frames of the largest activation per clip (the engine's budget ignores the batch)
    default = max(1, budget_frames(kind, probe, frame // n))
    if limit is None:
        return estimate(*_chunking(kind, default, t, f, chunk_frames))
    for units in range(min(default, f * t), 0, -1):
        plan = estimate(*_chunking(kind, units, t, f))
        if plan.bytes <= limit:
            return plan
    hint = "; decode_frames holds one chunk of the output at a time" if kind == "decode" and not streaming else ""
    held = format_bytes(fixed + out_bytes(1))
    raise ValueError(f"max_memory={format_bytes(limit)} is less than this {kind} of {tuple(shape)} {dtype} needs "
                     f"at one frame per chunk: {format_bytes(plan.bytes)} estimated ({held} of it the input and "
                     f"output){hint}")


def _chunks(total: int, chunk_frames: int):
    for start in range(0, total, chunk_frames):
        yield start, min(total, start + chunk_frames)


def check_chunking(chunk_frames, max_memory=None) -> Optional[int]:
    """Check a call's chunk_frames and max_memory (one of them at most); return max_memory in bytes (or None)."""
    check_chunk_frames(chunk_frames)
    if max_memory is None:
        return None
    if chunk_frames is not None:
        raise ValueError("pass chunk_frames or max_memory, not both (max_memory picks the chunking)")
    return parse_bytes(max_memory)


def check_chunk_frames(chunk_frames):
    # bool is an int subclass: chunk_frames=True would run as 1 frame per chunk
    if chunk_frames is not None and (not isinstance(chunk_frames, int) or isinstance(chunk_frames, bool)
                                     or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be a positive int or None, got {chunk_frames!r}")


def records(model, x: torch.Tensor) -> bool:
    """Whether autograd records an encode or decode of ``x``: grad mode is on and ``x`` or a parameter requires
    grad. Then the schedule runs in graph mode (below); else it writes into buffers it owns, recording nothing."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters()))


def _graph_chunk(graph: bool, checkpoint: Optional[bool], chunk_frames: Optional[int], t: int) -> Optional[int]:
    """The chunk a call runs with: ``chunk_frames``, but the whole clip when autograd records the call without
    checkpointing and no chunk is asked for. Every chunk's activations are then kept for backward whatever the
    chunking, so chunks bound no memory, and one chunk runs the largest, fastest ops (a float32 training step of
    full-size Wan2.1's decode of 17x64x64, no checkpointing: 4.41 s against 4.85 s in the budget's 3 chunks, medians
    of 4 alternating rounds, 2 Sapphire Rapids cores, 2026-12-07). The decoder's pieces keep to the budget."""
    if graph and checkpoint is False and chunk_frames is None:
        return t
    return chunk_frames


def _checkpointing(checkpoint: Optional[bool], chunks: int) -> bool:
    """The call's ``checkpoint`` option; None: on when the clip runs in more than one chunk."""
    if checkpoint is not None and not isinstance(checkpoint, bool):
        raise ValueError(f"checkpoint must be True, False or None, got {checkpoint!r}")
    return chunks > 1 if checkpoint is None else checkpoint


def _in_graph(state: CausalState, checkpoint: bool, step, part: torch.Tensor) -> torch.Tensor:
    """``step(state, part)`` (one chunk's work, returning its output), recorded by autograd: the graph runs through
    the causal state from chunk to chunk, so gradients do not depend on the chunking. With ``checkpoint``, the
    chunk's intermediates are not kept but recomputed in backward (torch.utils.checkpoint), from a copy of the
    state the chunk started from: backward memory is bounded by a chunk, not by the clip."""
    start = state.snapshot()
    recompute = False

    def pure(part):  # the same work from the same state, whenever it runs
        nonlocal recompute
        if recompute:  # in backward: first hand back what the previous chunk's backward freed (see trim_cpu_heap)
            trim_cpu_heap(part.device)
        recompute = True
        own = CausalState()
        own.restore(start)
        return step(own, part), own.snapshot()

    out, entries = recomputed(pure, part, use_reentrant=False) if checkpoint else pure(part)
    state.restore(entries)
    return out


def trim_cpu_heap(device: torch.device) -> None:
    """On CPU with glibc, hand the heap's free pages back to the OS (malloc_trim).

    Backward runs outside the cpp backend's memory span (autograd calls it after the schedule returns), so its
    large blocks come from glibc, whose raised mmap threshold serves them from a heap that fragments: the resident
    peak of a checkpointed full-size Wan2.1 decode step (17x64x64, Zen 3) was 1219 MiB with 720 MiB of live
    tensors, and 1028 MiB trimming before each chunk's recompute. Elsewhere (CUDA, no glibc) nothing."""
    if device.type == "cpu" and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _encoded(model, state, x):
    """The latent frames (raw) that the video frames ``x`` complete, as a new tensor."""
    out = x.new_empty(x.shape[0], 2 * model.spec.z_dim, 1 + x.shape[2] // model.spec.time_factor,
                      *model.latent_size(*x.shape[3:]))
    return out[:, :, :model.encode_chunk(x, state, out)]


def run_encoder(model, x: torch.Tensor, chunk_frames: Optional[int],
                progress: Optional[Callable[[int, int], None]] = None,
                checkpoint: Optional[bool] = None, bands=None) -> torch.Tensor:
    """Raw encoder output (``mu`` and ``log_var`` stacked on channels) of a validated video ``[N, C, T, H, W]``
    whose T is ``1 + time_factor*k``. When autograd records the call (``records``), the output has a graph through
    every chunk, checkpointed per chunk as ``checkpoint`` says (None: when there are several chunks). ``bands``
    (``layers.Bands``): ``x`` is this rank's band of rows of a frame split over a process group, and so is the
    output."""
    spec = model.spec
    n, _, t, h, w = x.shape
    graph = records(model, x)
    chunk = default_chunking(model, "encode", x, _graph_chunk(graph, checkpoint, chunk_frames, t))[0]
    t_lat = spec.latent_frames(t)
    chunks = list(_chunks(t, chunk))
    checkpoint = _checkpointing(checkpoint, len(chunks))
    result = None if graph else x.new_empty(n, 2 * spec.z_dim, t_lat, *model.latent_size(h, w))
    state, done, parts = CausalState(bands), 0, []
    with memory_span(x):
        schedule = _Schedule(chunks, state, keep_start=graph)
        for (start, end), _, replay in schedule:
            try:
                if graph:
                    parts.append(_in_graph(state, checkpoint, functools.partial(_encoded, model), x[:, :, start:end]))
                    made = parts[-1].shape[2]
                else:  # the latent frames of the frames before ``start`` are in front (a replay writes them again)
                    made = model.encode_chunk(x[:, :, start:end], state, result[:, :, spec.latent_frames(start):])
            except torch.OutOfMemoryError:
                schedule.retry()
                continue
            if not replay:
                done += made
                if progress:
                    progress(end, t)
    assert done == t_lat, (done, t_lat)
    return torch.cat(parts, dim=2) if graph else result


class _Schedule:
    """The chunks ``(start, end)`` to run, with the decoder's ``piece`` (frames its full-resolution layers take at a
    time; None for the encoder) and whether the chunk is a replay (below). When the work on a chunk raises an
    out-of-memory error, the caller calls ``retry()`` in its except block: the chunk is run again in two halves (one
    latent frame: in pieces of half the frames), down to one frame; chunking is only a schedule, so the result is the
    same. Running out at one frame re-raises. Warns once per call.

    The causal state the failed chunk started from is rebuilt by running the chunks before it again from a fresh
    state: those replays make the same outputs again, which the caller has handed on already. Keeping that state
    aside at each chunk's start instead (``keep_start``: where the frames before are gone, as in a streamed encode,
    or where the autograd graph keeps it anyway) holds two histories of every causal conv until the chunk ends:
    the float32 decode of 17x128x128 by the released Wan2.2 peaked at 333 MiB so, 223 MiB without (Sapphire
    Rapids, 2026-12-06)."""

    def __init__(self, chunks, state, piece=None, keep_start=False):
        self.pending = [(chunk, False) for chunk in reversed(chunks)]
        self.state, self.piece, self.keep_start, self.warned, self.finished = state, piece, keep_start, False, []

    def __iter__(self):
        while self.pending:
            self.current, self.replay = self.pending.pop()
            self.failed = False
            if self.keep_start:
                self.snapshot = self.state.snapshot()
            yield self.current, self.piece, self.replay
            if not self.failed and not self.keep_start:  # the chunks a retry replays
                self.finished.append(self.current)

    def retry(self):
        start, end = self.current
        if end - start == 1 and (self.piece or 1) == 1 or self.state.bands is not None:
            # the error being handled: nothing smaller to try, or the other ranks of a split run the chunks as
            # planned (their next exchange with this rank times out)
            raise
        self.failed = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not self.warned:
            self.warned = True
            warnings.warn(f"vaekernels: out of memory in a chunk of {end - start} frame(s); running it in smaller "
                          f"chunks (the result is the same)", RuntimeWarning, stacklevel=3)
        if end - start > 1:
            mid = (start + end) // 2
            self.pending += [((mid, end), self.replay), ((start, mid), self.replay)]
        else:
            self.piece = max(1, self.piece // 2)
            self.pending.append((self.current, self.replay))
        if self.keep_start:
            self.state.restore(self.snapshot)
        else:
            self.state.restore({})
            self.pending += [(chunk, True) for chunk in reversed(self.finished)]
            self.finished = []


def run_encoder_pieces(model, pieces, chunk_frames: Optional[int],
                       plan: Optional[Callable[[torch.Tensor], int]] = None):
    """Raw encoder output of a video that comes as consecutive validated pieces ``[N, C, t_i, H, W]`` (read from a
    file as it goes): frames are regrouped into the schedule's chunks, so that only a chunk's frames (plus one piece)
    are held. Returns ``(output, frames used, frames seen)``:
    frames after the last ``1 + time_factor*k`` are not encoded (as ``check_video`` drops them). ``plan``, when
    given, picks the chunk length from the first piece (``max_memory``)."""
    f = model.spec.time_factor
    held, count, outs, state, chunk, seen, used = [], 0, [], CausalState(), None, 0, 0
    schedule = _Schedule([], state, keep_start=True)  # the frames of the chunks before are gone

    def run(frames):
        nonlocal held, count, used
        x = torch.cat(held, dim=2) if len(held) > 1 else held[0]
        schedule.pending.append(((0, frames), False))
        for (start, end), _, _ in schedule:
            part = x[:, :, start:end]
            out = part.new_empty(part.shape[0], 2 * model.spec.z_dim, 1 + (end - start) // f,
                                 *model.latent_size(*part.shape[3:]))
            try:
                outs.append(out[:, :, :model.encode_chunk(part, state, out)])
            except torch.OutOfMemoryError:
                schedule.retry()
        rest = x[:, :, frames:]
        held, count, used = ([rest] if rest.shape[2] else []), rest.shape[2], used + frames

    with contextlib.ExitStack() as stack:
        for piece in pieces:
            if chunk is None:
                stack.enter_context(memory_span(piece))
                elements = model.encoder_frame_elements(*piece.shape[3:]) * piece.element_size()
                chunk = plan(piece) if plan else chunk_frames or default_chunk_frames(elements, 1 << 30, piece)
            held.append(piece)
            count += piece.shape[2]
            seen += piece.shape[2]
            while True:  # chunks of 1 + f*a frames first, then of f*b: the clip's frame groups kept whole
                size = 1 + f * ((chunk - 1) // f) if not used else f * max(1, chunk // f)
                if count < size:
                    break
                run(size)
        if count:
            last = 1 + f * ((count - 1) // f) if not used else f * (count // f)
            if last:
                run(last)
    if not outs:
        raise ValueError("the video has no frames")
    return torch.cat(outs, dim=2), used, seen


def run_decoder(model, z: torch.Tensor, chunk_frames: Optional[int],
                progress: Optional[Callable[[int, int], None]] = None,
                piece_frames: Optional[int] = None, output_device: Optional[torch.device] = None,
                checkpoint: Optional[bool] = None, bands=None) -> torch.Tensor:
    """Decoder output of an un-normalised latent ``[N, z_dim, T, h, w]``: ``[N, C, 1+time_factor*(T-1), H, W]``,
    on ``output_device`` (default: ``z``'s). When autograd records the call, and with ``bands``, as ``run_encoder``."""
    n, _, t, h, w = z.shape
    shape = (n, model.spec.video_channels, model.spec.video_frames(t), *model.video_size(h, w))
    if records(model, z):
        out = torch.cat(list(decoder_chunks(model, z, chunk_frames, progress, None, piece_frames, checkpoint, bands)),
                        dim=2)
        return out if output_device is None else out.to(output_device)
    if output_device is None or same_device(output_device, z.device):
        result = z.new_empty(shape)
        for _ in decoder_chunks(model, z, chunk_frames, progress, result, piece_frames, bands=bands):
            pass
        return result
    # another device (CUDA -> pinned host memory): each chunk is copied there as it is made, so the compute device
    # holds one chunk's output, not the video's; on CUDA the copies run behind the next chunk's kernels
    result = torch.empty(shape, dtype=z.dtype, device=output_device, pin_memory=_pinned(output_device, z))
    done = 0
    for chunk in decoder_chunks(model, z, chunk_frames, progress, None, piece_frames, bands=bands):
        # the chunk's memory may be reused by the next chunk only after this copy: CUDA's allocator orders reuse
        # on the stream
        result[:, :, done:done + chunk.shape[2]].copy_(chunk, non_blocking=True)
        done += chunk.shape[2]
    if z.device.type == "cuda":
        torch.cuda.current_stream(z.device).synchronize()
    return result


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` names ``b`` ("cuda" names the current CUDA device)."""
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None) != (b.index is None):
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def _pinned(device: torch.device, like: torch.Tensor) -> bool:
    return device.type == "cpu" and like.device.type == "cuda"


def moved(chunk: torch.Tensor, device: Optional[torch.device]) -> torch.Tensor:
    """``chunk`` on ``device`` (pinned host memory when it comes from CUDA); itself when it is there already."""
    if device is None or same_device(device, chunk.device):
        return chunk
    return torch.empty(chunk.shape, dtype=chunk.dtype, device=device, pin_memory=_pinned(device, chunk)).copy_(chunk)


def _decoded(model, frames, piece, state, z):
    """The ``frames`` video frames of the latent frames ``z``, as a new tensor."""
    out = z.new_empty(z.shape[0], model.spec.video_channels, frames, *model.video_size(*z.shape[3:]))
    model.decode_chunk(z, state, out, piece)
    return out


def decoder_chunks(model, z: torch.Tensor, chunk_frames: Optional[int],
                   progress: Optional[Callable[[int, int], None]] = None, result: Optional[torch.Tensor] = None,
                   piece_frames: Optional[int] = None, checkpoint: Optional[bool] = None, bands=None):
    """Yields the decoder's output chunk by chunk, in order: ``[N, C, frames, H, W]``, views of ``result`` when it
    is given (``run_decoder``), else each chunk's own tensor (so that only a chunk is held at a time).
    ``piece_frames``: output frames the output-resolution layers take at a time (None: from the budget). When
    autograd records the call (``records``), each chunk's own tensor with its graph (``result`` is not used),
    checkpointed per chunk as ``checkpoint`` says (None: when there are several chunks). ``bands``: as
    ``run_encoder``."""
    spec = model.spec
    n, _, t, h, w = z.shape
    f = spec.time_factor
    # at the output resolution a latent frame becomes time_factor frames; the decoder runs the layers there in
    # pieces of frames that fit the budget (a chunk of one latent frame can still be too large)
    graph = records(model, z)
    chunk, piece = default_chunking(model, "decode", z, _graph_chunk(graph, checkpoint, chunk_frames, t))
    piece = piece_frames or piece
    state = CausalState(bands)
    chunks = list(_chunks(t, chunk))
    checkpoint = _checkpointing(checkpoint, len(chunks))
    with memory_span(z):
        schedule = _Schedule(chunks, state, piece, keep_start=graph)
        for (start, end), piece, replay in schedule:
            frames = f * (end - start) - (f - 1 if start == 0 else 0)  # the clip's first latent frame gives one
            try:
                if graph:
                    out = _in_graph(state, checkpoint, functools.partial(_decoded, model, frames, piece),
                                    z[:, :, start:end])
                else:  # a replay writes its frames again, or makes them to drop them
                    at = spec.video_frames(start) if start else 0
                    out = result[:, :, at:at + frames] if result is not None else \
                        z.new_empty(n, spec.video_channels, frames, *model.video_size(h, w))
                    model.decode_chunk(z[:, :, start:end], state, out, piece)
            except torch.OutOfMemoryError:
                out = None
                schedule.retry()
                continue
            if replay:
                continue
            if progress:
                progress(end, t)
            yield out
