"""Video and latent files for the command line: reading and writing videos with PyAV (whose wheels ship ffmpeg),
latents as safetensors with the metadata that ``decode`` needs, and files that appear under their final name
only when complete (written beside it, renamed at the end, removed on any error or interrupt)."""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

LATENT_FORMAT = "vaekernels-latent-1"


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("video files need PyAV: pip install av") from e
    return av


@contextlib.contextmanager
def written_atomically(path):
    """Yields a temporary path beside ``path`` (same suffix, so formats chosen by suffix still work); renames it
    to ``path`` when the block ends normally, removes it otherwise (errors, Ctrl-C)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        # an ordinary file's permissions (some writers, safetensors' among them, create theirs 0600)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class VideoReader:
    """The RGB frames of a file's first video stream, uint8 ``[H, W, 3]`` one at a time (at most ``max_frames``),
    with ``fps``; ValueError saying what is wrong with a file that is missing, not a video, damaged, cut short
    (fewer frames than its header declares) or empty."""

    def __init__(self, path, max_frames=None):
        self.av, self.path, self.max_frames = _av(), Path(path), max_frames
        if not self.path.exists():
            raise ValueError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise ValueError(f"{self.path}: is a directory, not a video file")
        try:
            self.container = self.av.open(str(self.path))
        except self.av.error.EOFError:  # a header and nothing after it
            raise ValueError(f"{self.path}: has no frames") from None
        except self.av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: cannot be read as a video (not a video file, or cut short): {e}") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{self.path}: has no video stream")
        self.stream = self.container.streams.video[0]
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 0) or 16.0

    def __iter__(self):
        n, declared = 0, _declared_frames(self.container, self.stream, self.fps)
        try:
            for frame in self.container.decode(self.stream):
                yield torch.from_numpy(frame.to_ndarray(format="rgb24"))
                n += 1
                if self.max_frames and n >= self.max_frames:
                    return
        except self.av.error.EOFError:
            pass  # the file ends where a frame was expected: the frames before it (none, or too few: below)
        except self.av.error.FFmpegError as e:
            what = "cannot be read as a video (not a video file, or cut short)" if not n else \
                f"is damaged after frame {n}"
            raise ValueError(f"{self.path}: {what}: {e}") from None
        finally:
            self.container.close()
        if not n:
            raise ValueError(f"{self.path}: has no frames")
        if declared > n + 1:
            raise ValueError(f"{self.path}: is cut short: its header says {declared} frames, {n} could be read")


def read_video(path, max_frames=None):
    """``(frames, fps)``: all the frames of ``VideoReader(path, max_frames)`` as uint8 ``[T, H, W, 3]``."""
    reader = VideoReader(path, max_frames)
    return torch.stack(list(reader)), reader.fps


def _declared_frames(container, stream, fps):
    """The frame count the file's header declares (0: unknown): the stream's count, else its duration, else the
    container's duration where the video is its only stream (matroska's case)."""
    if stream.frames:
        return stream.frames
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base) * fps)
    if container.duration and len(container.streams) == 1:
        return round(container.duration / 1e6 * fps)
    return 0


def fit_frames(frames, factor, size=None):
    """``(frames, note)``: uint8 ``[T, H, W, 3]`` of a size the model takes (H and W multiples of ``factor``):
    resized to ``size`` = (H, W) when given (which must be such a size), else centre-cropped to the largest such
    size; ``note`` says what was done (None: nothing)."""
    t, h, w, _ = frames.shape
    if size is not None:
        sh, sw = size
        if sh <= 0 or sw <= 0 or sh % factor or sw % factor:
            raise ValueError(f"--size: H and W must be positive multiples of {factor} for this model, got {sh}x{sw}")
        if (sh, sw) == (h, w):
            return frames, None
        x = frames.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1), f"resized {h}x{w} -> {sh}x{sw}"
    ch, cw = h // factor * factor, w // factor * factor
    if ch == 0 or cw == 0:
        raise ValueError(f"the video is {h}x{w}: smaller than this model's {factor}x{factor}; pass --size")
    if (ch, cw) == (h, w):
        return frames, None
    top, left = (h - ch) // 2, (w - cw) // 2
    return frames[:, top:top + ch, left:left + cw], f"cropped {h}x{w} -> {ch}x{cw} (centre; multiples of {factor})"


def to_clip(frames):
    """uint8 ``[T, H, W, 3]`` -> float32 ``[3, T, H, W]`` in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0


def to_frames(clip):
    """``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]``."""
    return ((clip.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


class VideoWriter:
    """Writes ``[3, t, H, W]`` chunks in [-1, 1] to an H.264 file as they come; use inside ``written_atomically``."""

    def __init__(self, path, fps, height, width):
        av = _av()
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=round(fps) or 16)
        self.stream.height, self.stream.width, self.stream.pix_fmt = height, width, "yuv420p"
        self.stream.options = {"crf": "16"}
        self._frame = av.VideoFrame

    def write(self, chunk):
        for f in to_frames(chunk).numpy():
            self.container.mux(self.stream.encode(self._frame.from_ndarray(f, format="rgb24")))

    def close(self):
        self.container.mux(self.stream.encode())
        self.container.close()


def save_latent(path, z, meta):
    """A latent ``[z_dim, T, h, w]`` and its metadata (family, fps, sizes, statistics used) as safetensors."""
    from safetensors.torch import save_file
    with written_atomically(path) as tmp:
        save_file({"latent": z.contiguous()}, str(tmp),
                  metadata={"format": LATENT_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}})


def load_latent(path):
    """``(z, meta)`` of a file written by ``save_latent``; ValueError saying what is missing or wrong."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
            if raw.get("format") != LATENT_FORMAT or "latent" not in f.keys():
                raise ValueError(f"{path}: not a latent file of `python -m vaekernels encode` (format "
                                 f"{raw.get('format')!r}, tensors {sorted(f.keys())[:3]})")
            z = f.get_tensor("latent")
    except ValueError:
        raise
    except Exception as e:  # safetensors' own errors: header or size
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its metadata is not what encode writes ({e})") from None
    for key in ("family", "fps", "size", "frames"):
        if key not in meta:
            raise ValueError(f"{path}: its metadata has no {key!r}")
    if z.dim() != 4:
        raise ValueError(f"{path}: the latent is {tuple(z.shape)}, not [z_dim, T, h, w]")
    return z, meta


def mse_frames(a, b):
    """Mean squared error of each frame of two ``[3, T, H, W]`` clips in [-1, 1], measured on [0, 1]."""
    return ((a.float() - b.float()) / 2).pow(2).mean(dim=(0, 2, 3)).tolist()


def psnr_db(mse):
    """PSNR in dB of a mean squared error on [0, 1] (the clip's: the mean of its frames', all of one size)."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim_frames(a, b):
    """SSIM of each frame of two ``[3, T, H, W]`` clips in [-1, 1] (on [0, 1], Gaussian window 11 with sigma 1.5,
    the usual constants, averaged over R, G and B)."""
    x, y = ((t.float().transpose(0, 1) + 1) / 2 for t in (a, b))  # [T, 3, H, W]
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).tolist()
