"""What every model family shares: its spec, the input checks, and encode/decode over the engine.

A family's model subclasses ``VAEModel`` and supplies the steps the engine schedules (``encode_chunk``,
``decode_chunk``), the sizes it maps between (``latent_size``, ``video_size``), the per-frame sizes the chunk
budget is measured in, and its own size rules (``check_size``); everything else here reads only its ``spec``.
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from .. import engine
from .distributions import DiagonalGaussian
from .losses import ELBOTerms, check_generator, check_terms, elbo_terms
from .split import Split, band_rows, check_options


@dataclass(frozen=True)
class VAESpec:
    """A model's compression and channels, as the engine and the wrappers see them."""
    family: str  # registry name, e.g. "wan2.1"
    video_channels: int  # channels of the video it encodes and decodes (3: RGB)
    z_dim: int  # latent channels
    time_factor: int  # T = 1 + time_factor*k frames <-> 1 + k latent frames (causal: frame 0 alone)
    space_factor: int  # H, W <-> H / space_factor, W / space_factor
    patch_size: int = 1  # pixels per side folded into channels before the first conv (Wan2.2: 2)
    latents_mean: Optional[Sequence[float]] = None  # the released model's per-channel statistics (z_dim values)
    latents_std: Optional[Sequence[float]] = None

    def latent_frames(self, t: int) -> int:
        return 1 + (t - 1) // self.time_factor

    def video_frames(self, t: int) -> int:
        return 1 + self.time_factor * (t - 1)


def _scale_view(s, like):
    if torch.is_tensor(s):
        return s.to(device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
    return float(s)


def _normalised(z, scale):
    """Upstream's latent normalisation ``(z - mean) * (1/std)``, with ``scale = [mean, 1/std]``."""
    return (z - _scale_view(scale[0], z)) * _scale_view(scale[1], z)


def _no_autocast(x):
    """The model computes in its own dtype: a caller's autocast would hand some ops' outputs (attention) to the
    next op in another dtype than its weights."""
    return torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()


def _output_device(device) -> Optional[torch.device]:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"output_device must be a device such as 'cpu' or 'cuda:0', got {device!r}") from None


def check_device(x, name):
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without data); move it to the model's device "
                         f"(cpu or cuda) first")


def check_finite(x, name):
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values (pass check_finite=False to skip this check)")


_check_finite = check_finite  # for methods whose check_finite= flag hides the function


class VAEModel(nn.Module):
    """Base of the fast models: ``encode``/``decode`` with upstream's ``scale = [mean, 1/std]``, the posterior and
    sampling, each taking ``chunk_frames=`` (None: a memory-bounded default) and running on the engine."""

    spec: VAESpec
    # the measured coefficients of the memory estimate (engine.memory_features, benchmarks/memory_model.py), per
    # kernel path (backends.memory_path; "default" for paths measured with none of their own): {path: {"encode":
    # (per frame of the chunk, per frame of state, per MiB), "decode": (per output frame of the chunk, per frame of
    # the piece, per frame of state, per MiB)}}, a frame being the largest activation per frame
    memory_coefficients: dict

    # --- what a family supplies -------------------------------------------------------------------------------
    def latent_size(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def video_size(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def check_size(self, h: int, w: int, name: str) -> None:
        """Raise for a video size the model cannot take; warn where it floors like upstream."""
        raise NotImplementedError

    def encoder_frame_elements(self, h: int, w: int) -> int:
        """Elements per frame of the encoder's largest per-frame activation, for a ``h x w`` video."""
        raise NotImplementedError

    def decoder_frame_elements(self, h: int, w: int) -> int:
        """Elements per output frame of the decoder's largest activation, for a ``h x w`` latent (the layers at
        the output resolution, which the decoder can run in pieces of frames)."""
        raise NotImplementedError

    def encode_chunk(self, x, state, out) -> int:
        """Encode the next frames ``x`` of the clip: write the raw encoder output (mu, log_var on channels) of the
        latent frames they complete to the front of ``out``; return how many (maybe 0)."""
        raise NotImplementedError

    def decode_chunk(self, z, state, out, piece_frames: Optional[int]) -> None:
        """Decode the next frames ``z`` of an un-normalised latent into ``out`` (exactly the video frames they
        give), the output-resolution layers ``piece_frames`` frames at a time (None: all at once)."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return self.spec.z_dim

    def check_video(self, x: torch.Tensor, name: str = "x", check_finite_values: bool = True) -> torch.Tensor:
        """Validate a ``[N, C, T, H, W]`` video; return it cut to ``1+4k`` frames (warning if frames are dropped)."""
        c = self.spec.video_channels
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        check_device(x, name)
        if x.dim() != 5 or x.shape[1] != c:
            raise ValueError(f"{name} must be a [N, {c}, T, H, W] video, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (values in [-1, 1]), got {x.dtype}")
        n, _, t, h, w = x.shape
        if n < 1 or t < 1:
            raise ValueError(f"{name} must have at least one clip and one frame, got shape {tuple(x.shape)}")
        self.check_size(h, w, name)
        f = self.spec.time_factor
        keep = 1 + f * ((t - 1) // f)
        if keep != t:
            warnings.warn(f"{name}: T={t} is not 1+{f}k; as upstream, the last {t - keep} frame(s) are ignored",
                          stacklevel=4)
            x = x[:, :, :keep]
        if check_finite_values:
            check_finite(x, name)
        return x

    def check_latent(self, z: torch.Tensor, name: str = "z", check_finite_values: bool = True) -> torch.Tensor:
        if not torch.is_tensor(z):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        check_device(z, name)
        if z.dim() != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"{name} must be a [N, {self.z_dim}, T, h, w] latent, got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
        if min(z.shape[0], z.shape[2], z.shape[3], z.shape[4]) < 1:
            raise ValueError(f"{name} must not be empty, got shape {tuple(z.shape)}")
        if check_finite_values:
            check_finite(z, name)
        return z

    def check_no_graph(self, x: torch.Tensor, name: str, method: str, instead: str, grad_enabled: bool) -> None:
        """Refuse a streaming call that autograd would record (``grad_enabled``: the caller's grad mode): it runs each
        chunk under no_grad, so gradients would be dropped without a word (a loss through the output would give
        zero gradients)."""
        with torch.set_grad_enabled(grad_enabled):
            if not engine.records(self, x):
                return
        what = f"{name} requires grad" if x.requires_grad else "the model's parameters require grad"
        raise RuntimeError(f"{what}, but {method} builds no autograd graph (it works chunk by chunk under no_grad): "
                           f"use {instead} for gradients, or call it under torch.no_grad() (or "
                           f"torch.inference_mode()), or call model.requires_grad_(False) once")

    def _graph_mode(self, x, max_memory):
        """The grad mode a call on ``x`` runs in: its own when autograd records it (engine.records), else no_grad.
        ``max_memory`` plans inference memory, so it is refused with a graph."""
        if not engine.records(self, x):
            return torch.no_grad()
        if max_memory is not None:
            raise ValueError("max_memory plans the memory of inference; this call records an autograd graph (grad "
                             "mode is on and the input or the parameters require grad): pass chunk_frames (and "
                             "checkpoint) instead, or call it under torch.no_grad()")
        return nullcontext()

    def _prepare(self, x):
        p = next(self.parameters())
        return x.to(dtype=p.dtype, device=p.device)

    def estimate_memory(self, kind: str, shape: Sequence[int], *, dtype: Optional[torch.dtype] = None,
                        chunk_frames: Optional[int] = None, max_memory=None, streaming: bool = False,
                        input_dtype: Optional[torch.dtype] = None) -> engine.MemoryPlan:
        """The chunking an ``encode`` (``kind="encode"``, ``shape`` of the video ``[N, C, T, H, W]``) or ``decode``
        (``"decode"``, ``shape`` of the latent) runs with, and the memory it is estimated to add above the loaded
        model, in bytes (``.bytes``; the output included). ``chunk_frames``: that chunking; ``max_memory`` (bytes,
        or a string such as ``"4GiB"``): the longest chunking up to the default whose estimate fits, a ValueError
        when none does; neither: the default. ``dtype``: the model's unless given; ``input_dtype``: an input of
        another dtype is copied, which counts; ``streaming``: one chunk's output counts (``decode_frames``,
        ``encode_frames``), not the whole.

        Not counted: the weights the fast kernels prepare at a model's first call, and at the first call of a
        chunking with new shapes (kept for later calls). The
        estimate is a formula in the sizes of the largest activations whose coefficients were measured on CPU for
        the released models (``benchmarks/memory_model.py``, results in benchmarks/RESULTS.md); on CUDA the same
        formula is used (not yet checked there)."""
        if isinstance(shape, torch.Size):
            shape = tuple(shape)
        if not isinstance(shape, (tuple, list)) or len(shape) != 5 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise ValueError(f"shape must be 5 positive ints [N, C, T, H, W], got {shape!r}")
        p = next(self.parameters())
        return engine.plan_memory(self, kind, tuple(shape), dtype or p.dtype, p.device, chunk_frames=chunk_frames,
                                  max_memory=max_memory, streaming=streaming, input_dtype=input_dtype)

    def _planned(self, kind, x, chunk_frames, max_memory, streaming=False):
        """``(chunk_frames, piece_frames)`` for a call: as given unless ``max_memory`` picks them."""
        if max_memory is None:
            return chunk_frames, None
        plan = self.estimate_memory(kind, x.shape, chunk_frames=chunk_frames, max_memory=max_memory,
                                    streaming=streaming, input_dtype=x.dtype)
        return plan.chunk_frames, plan.piece_frames

    def encode_raw(self, x, *, chunk_frames: Optional[int] = None, max_memory=None, check_finite: bool = True,
                   progress: Optional[Callable[[int, int], None]] = None, checkpoint: Optional[bool] = None,
                   group=None, band_input: bool = False, output="all", timeout: Optional[float] = None):
        """``(mu, log_var)`` of the posterior, un-normalised (``log_var`` unclamped, as upstream).

        Gradients: when grad mode is on and ``x`` or a parameter requires grad, the output has an autograd graph
        through every chunk (the same gradients whatever ``chunk_frames``); ``checkpoint``: each chunk's
        intermediates are recomputed in backward instead of kept, so backward memory is bounded by a chunk (None:
        on when the clip runs in more than one chunk); ``checkpoint=False`` without ``chunk_frames`` runs the whole
        clip as one chunk (every chunk's activations are kept anyway: chunks would bound no memory, and one chunk
        runs faster). Else nothing is recorded (as under no_grad).

        ``group`` (a torch.distributed process group; every rank calls with the same arguments): the frames are
        split over its ranks by bands of rows (``band_rows``), each rank computing its band; the result equals the
        single-process one. By default every rank passes the whole video and gets the whole result;
        ``band_input=True``: each passes its own band of rows; ``output``: "all", "band" (each rank gets its band of
        the latent) or a rank (that rank gets the whole, the others ``(None, None)``). ``timeout``: seconds a rank
        waits for another in any exchange before raising ``PeerError`` (default ``split.DEFAULT_TIMEOUT_S``). Split
        calls record no autograd graph and take no ``max_memory`` (yet)."""
        engine.check_chunk_frames(chunk_frames)
        split = self._split(group, band_input, output, timeout, max_memory)
        if split is not None:
            x = split.agreed(lambda: self._check_no_split_graph(self.check_video(x, "x", check_finite)), "x")
            x = self._prepare(split.band(x, latent=False, name="x"))
            chunk_frames, _ = split.schedule("encode", x, chunk_frames)
            with torch.no_grad(), _no_autocast(x):
                out = split.assemble(engine.run_encoder(self, x, chunk_frames, progress, bands=split.bands))
            return (None, None) if out is None else (out[:, : self.z_dim], out[:, self.z_dim:])
        x = self.check_video(x, "x", check_finite)
        grad_mode = self._graph_mode(x, max_memory)
        chunk_frames, _ = self._planned("encode", x, chunk_frames, max_memory)
        with grad_mode, _no_autocast(x):
            out = engine.run_encoder(self, self._prepare(x), chunk_frames, progress, checkpoint)
        return out[:, : self.z_dim], out[:, self.z_dim:]

    def band_rows(self, height: int, world_size: int, latent: bool = False) -> list[tuple[int, int]]:
        """The rows ``[(start, end), ...]`` of a frame ``height`` rows tall that each rank of a split over
        ``world_size`` ranks holds (``group=``), rank 0 the top band: whole latent rows, as even as they go (sizes
        differ by one latent row at most), the bottom band with the rows past the last whole latent row; a
        ValueError when there are fewer latent rows than ranks. ``latent``: ``height`` and the bands count latent
        rows (a decode's input)."""
        return band_rows(self, height, world_size, latent)

    def _split(self, group, band_input, output, timeout, max_memory) -> Optional[Split]:
        """The call's split over ``group`` (None without a group, or with one rank: nothing changes)."""
        check_options(group, max_memory, band_input, output, timeout)
        if group is None:
            return None
        split = Split(self, group, band_input, output, timeout)
        return split if split.bands.world > 1 else None

    def _check_no_split_graph(self, x):
        """``x``, unless autograd would record the call (a split call cannot)."""
        if engine.records(self, x):
            raise RuntimeError("a call split over a process group (group=) records no autograd graph: call it under "
                               "torch.no_grad(), or with an input and parameters that do not require grad")
        return x

    def encode(self, x, scale, *, chunk_frames: Optional[int] = None, max_memory=None, check_finite: bool = True,
               progress: Optional[Callable[[int, int], None]] = None, checkpoint: Optional[bool] = None,
               group=None, band_input: bool = False, output="all", timeout: Optional[float] = None):
        """Normalised posterior mean ``(mu - scale[0]) * scale[1]``, as upstream's ``encode`` (gradients, and the
        split over ``group``: as ``encode_raw``; None on the ranks an ``output`` rank leaves out)."""
        mu, _ = self.encode_raw(x, chunk_frames=chunk_frames, max_memory=max_memory, check_finite=check_finite,
                                progress=progress, checkpoint=checkpoint, group=group, band_input=band_input,
                                output=output, timeout=timeout)
        return None if mu is None else _normalised(mu, scale)

    def encode_frames(self, pieces: Iterable[torch.Tensor], scale, *, chunk_frames: Optional[int] = None,
                      max_memory=None, check_finite: bool = True):
        """``encode`` of a video that comes as consecutive pieces ``[N, C, t_i, H, W]`` (of any lengths, e.g. read
        from a file as it goes): only a chunk's frames are held at a time. Each piece is checked as it comes (the
        same N, C, H, W, dtype and device as the first); frames after the last 1+4k are dropped with a warning.
        ``max_memory`` plans the chunks from the first piece, counting one chunk's latent (the clip's length is not
        known ahead; the whole latent, about 1/24 of the video's bytes for Wan2.1, 1/32 for Wan2.2, is held too)."""
        if engine.check_chunking(chunk_frames, max_memory) is not None:  # before the first piece is read

            def plan(piece):  # the length is unknown: a clip long enough not to shorten the chunks
                n, c, _, h, w = piece.shape
                return self.estimate_memory("encode", (n, c, 1 + (1 << 20), h, w), max_memory=max_memory,
                                            streaming=True).chunk_frames
        else:
            plan = None

        grad_enabled = torch.is_grad_enabled()

        def checked():  # each piece as it comes, before it is cast to the model's dtype and device
            like = None
            for i, piece in enumerate(pieces):
                name = f"pieces[{i}]"
                if like is None:
                    like = self.check_video(piece[:, :, :1] if torch.is_tensor(piece) else piece, name, False)
                elif not torch.is_tensor(piece) or piece.dim() != 5 or piece.shape[:2] != like.shape[:2] or \
                        piece.shape[3:] != like.shape[3:] or piece.dtype != like.dtype or piece.device != like.device:
                    got = (tuple(piece.shape), piece.dtype, str(piece.device)) if torch.is_tensor(piece) else \
                        type(piece).__name__
                    raise ValueError(f"{name} must continue the video: [{like.shape[0]}, {like.shape[1]}, t, "
                                     f"{like.shape[3]}, {like.shape[4]}] {like.dtype} on {like.device}, got {got}")
                self.check_no_graph(piece, name, "encode_frames", "encode", grad_enabled)
                if check_finite:
                    _check_finite(piece, name)
                yield self._prepare(piece)

        with torch.no_grad(), _no_autocast(torch.empty(0, device=next(self.parameters()).device)):
            out, used, seen = engine.run_encoder_pieces(self, checked(), chunk_frames, plan)
        if used != seen:
            warnings.warn(f"the video has {seen} frames, not 1+{self.spec.time_factor}k; as upstream, the last "
                          f"{seen - used} frame(s) are ignored", stacklevel=2)
        mu = out[:, : self.z_dim]
        return _normalised(mu, scale)

    def decode(self, z, scale, *, chunk_frames: Optional[int] = None, max_memory=None, check_finite: bool = True,
               progress: Optional[Callable[[int, int], None]] = None, output_device=None,
               checkpoint: Optional[bool] = None, group=None, band_input: bool = False, output="all",
               timeout: Optional[float] = None):
        """Unclamped video of a normalised latent, as upstream's ``decode``. ``output_device`` (e.g. ``"cpu"`` for
        a model on CUDA): where the video is made, chunk by chunk (pinned host memory from CUDA), so that the
        model's device never holds the whole video; default: the model's device. Gradients: as ``encode_raw``
        (with a graph, the video is made on the model's device and then moved to ``output_device``). ``group``
        and its options: as ``encode_raw`` (``band_input``: bands of latent rows, ``band_rows(h, world_size,
        latent=True)``; a split's video is assembled on the model's device, then moved to ``output_device``)."""
        output_device = _output_device(output_device)
        split = self._split(group, band_input, output, timeout, max_memory)
        if split is not None:
            engine.check_chunk_frames(chunk_frames)
            z = split.agreed(lambda: self._check_no_split_graph(self.check_latent(z, "z", check_finite)), "z")
            z = split.band(z, latent=True, name="z")
            z, _, _ = self._unnormalised(z, scale, None, None, False)
            chunk_frames, piece_frames = split.schedule("decode", z, chunk_frames)
            with torch.no_grad(), _no_autocast(z):
                video = split.assemble(engine.run_decoder(self, z, chunk_frames, progress, piece_frames,
                                                          bands=split.bands))
            return video if video is None or output_device is None else video.to(output_device)
        grad_mode = self._graph_mode(z, max_memory) if torch.is_tensor(z) else torch.no_grad()
        z, chunk_frames, piece_frames = self._unnormalised(z, scale, chunk_frames, max_memory, check_finite,
                                                           output_device=output_device, grad_mode=grad_mode)
        with grad_mode, _no_autocast(z):
            return engine.run_decoder(self, z, chunk_frames, progress, piece_frames, output_device, checkpoint)

    def _unnormalised(self, z, scale, chunk_frames, max_memory, check_finite, streaming=False, output_device=None,
                      grad_mode=None):
        """The checked latent ``z`` in the model's dtype and device, un-normalised (the decoder's input), and the
        chunk and piece lengths to decode it with (an output on another device is held like a stream's chunks);
        computed in ``grad_mode`` (default: no_grad)."""
        engine.check_chunk_frames(chunk_frames)
        z = self.check_latent(z, "z", check_finite)
        elsewhere = output_device is not None and not engine.same_device(output_device, next(self.parameters()).device)
        chunk_frames, piece_frames = self._planned("decode", z, chunk_frames, max_memory, streaming or elsewhere)
        with grad_mode or torch.no_grad(), _no_autocast(z):
            z = self._prepare(z)
            return z / _scale_view(scale[1], z) + _scale_view(scale[0], z), chunk_frames, piece_frames

    def decode_frames(self, z, scale, *, chunk_frames: Optional[int] = None, max_memory=None,
                      check_finite: bool = True, progress: Optional[Callable[[int, int], None]] = None,
                      output_device=None) -> Iterator[torch.Tensor]:
        """``decode``'s output chunk by chunk, as the schedule makes it: an iterator of ``[N, C, frames, H, W]``
        (unclamped; the clip's frames in order; concatenated, equal to ``decode``'s). Only one chunk's output is
        held at a time. ``z`` is checked here, before the first chunk. Grad mode and autocast are set around each
        chunk's computation only, never while the caller holds a chunk; the weights must not change before the
        iterator is exhausted or closed. ``output_device``: where the chunks are handed out (e.g. ``"cpu"`` for a
        model on CUDA: pinned host memory); default: the model's device."""
        output_device = _output_device(output_device)
        if torch.is_tensor(z):
            self.check_no_graph(z, "z", "decode_frames", "decode", torch.is_grad_enabled())
        z, chunk_frames, piece_frames = self._unnormalised(z, scale, chunk_frames, max_memory, check_finite, True)
        return self._chunks(engine.decoder_chunks(self, z, chunk_frames, progress, None, piece_frames), z,
                            output_device)

    @staticmethod
    def _chunks(chunks, like, output_device=None):
        while True:
            with torch.no_grad(), _no_autocast(like):
                out = next(chunks, None)
            if out is None:
                return
            yield engine.moved(out, output_device)

    def posterior(self, x, *, chunk_frames: Optional[int] = None, max_memory=None, check_finite: bool = True,
                  checkpoint: Optional[bool] = None) -> DiagonalGaussian:
        """The diagonal Gaussian posterior q(z|x) (un-normalised latent space; gradients: as ``encode_raw``)."""
        mu, log_var = self.encode_raw(x, chunk_frames=chunk_frames, max_memory=max_memory, check_finite=check_finite,
                                      checkpoint=checkpoint)
        return DiagonalGaussian(mu, log_var)

    def sample(self, x, scale, deterministic: bool = False, generator: Optional[torch.Generator] = None, *,
               chunk_frames: Optional[int] = None, checkpoint: Optional[bool] = None):
        """A latent drawn from the posterior (its mean if ``deterministic``), normalised as ``encode``."""
        post = self.posterior(x, chunk_frames=chunk_frames, checkpoint=checkpoint)
        z = post.mode() if deterministic else post.sample(generator)
        return _normalised(z, scale)

    def elbo(self, x, beta: float = 1.0, *, distance: str = "l1", per_pixel: bool = False,
             generator: Optional[torch.Generator] = None, deterministic: bool = False,
             chunk_frames: Optional[int] = None, checkpoint: Optional[bool] = None) -> ELBOTerms:
        """The negative ELBO of the video ``x`` ``[N, C, T, H, W]`` in [-1, 1], for training (``losses.ELBOTerms``):
        ``loss = reconstruction + beta * kl`` per video element, where ``reconstruction`` is the L1 (``distance=
        "l1"``) or squared (``"mse"``) distance between ``x`` and the decoding of a reparameterised draw from the
        posterior (``generator``: the draw's random numbers; ``deterministic``: its mean instead), averaged over
        every element (``per_pixel``: the ``[N, C, T, H, W]`` map, and ``loss`` uses its mean), and ``kl`` is the
        posterior's KL divergence to N(0, I) in nats per video element. Gradients flow to the parameters that require
        grad (and to ``x`` if it does); ``chunk_frames`` and ``checkpoint`` as in ``encode_raw``."""
        check_terms(beta, distance)
        check_generator(generator, next(self.parameters()))
        post = self.posterior(x, chunk_frames=chunk_frames, checkpoint=checkpoint)
        z = post.mode() if deterministic else post.sample(generator)
        video = self.decode(z, (0.0, 1.0), chunk_frames=chunk_frames, checkpoint=checkpoint)
        return elbo_terms(video, self._prepare(x), post, beta, distance, per_pixel)

    def warm_up(self, height: int, width: int) -> float:
        """Compile what clips of ``height x width`` frames will need, by encoding and decoding 5 zero frames of that
        size; returns the seconds it took. On CUDA that is every Triton kernel variant such clips launch, whatever
        their length (frame and pixel counts are not specialised on), so that the first real call's time is its
        running time; on CPU, the C++ kernels' weights prepared for these shapes. Bad sizes are refused as by
        ``encode``."""
        weight = next(self.parameters())
        start = time.perf_counter()
        x = torch.zeros(1, self.spec.video_channels, 5, height, width, dtype=weight.dtype, device=weight.device)
        # no finiteness checks: the input is zeros, and the latent is this encode's own (or, when the Triton
        # launches are only recorded, never written)
        mu, _ = self.encode_raw(x, check_finite=False)
        self.decode(mu, (torch.zeros(mu.shape[1]), torch.ones(mu.shape[1])), check_finite=False)
        if weight.is_cuda:
            torch.cuda.synchronize(weight.device)
        return time.perf_counter() - start

    def forward(self, x, scale, chunk_frames: Optional[int] = None, checkpoint: Optional[bool] = None):
        """Reconstruction through the posterior mean."""
        z = self.encode(x, scale, chunk_frames=chunk_frames, checkpoint=checkpoint)
        return self.decode(z, scale, chunk_frames=chunk_frames, checkpoint=checkpoint)
