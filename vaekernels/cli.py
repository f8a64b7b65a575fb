"""The command line's file commands: ``encode IN.mp4 OUT.safetensors``, ``decode IN.safetensors OUT.mp4`` and
``roundtrip IN.mp4 OUT.mp4``. Decoding streams: frames go to the video file chunk by chunk as the decoder makes
them, so memory does not grow with the clip's length. Outputs appear only when complete.

Under ``torchrun`` with more than one process, every command splits its encode and decode over the processes by
bands of rows (gloo on CPU, NCCL on CUDA, each process on the GPU of its local rank): each reads the input, rank 0
writes the outputs and prints. A split call takes the whole clip at once (no streaming)."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from . import envs
from .demo import PeakRSS
from .models import detect, get, load_state_dict
from .video import (VideoReader, VideoWriter, fit_frames, load_latent, mse_frames, psnr_db, save_latent, ssim_frames,
                    to_clip, to_frames, written_atomically)
from .wrappers.loader import WRAPPERS

SHEET_FRAMES = 6
PIECE_FRAMES = 8  # frames read and fitted at a time by encode: the model regroups them into its chunks


def add_arguments(sub):
    common = dict(weights=("--weights", dict(help="Wan2.1 or Wan2.2 VAE checkpoint (.pth or .safetensors), the model "
                                                  "read from it; default: random weights of --model")),
                  model=("--model", dict(choices=["wan2.1", "wan2.2"], default="wan2.1",
                                         help="the model of random weights (without --weights)")),
                  dtype=("--dtype", dict(choices=["float32", "bfloat16", "float16"], default="float32")),
                  device=("--device", dict(help="cpu or cuda (default: cuda when available)")),
                  chunk=("--chunk-frames", dict(type=int, help="frames per chunk: video frames when encoding, latent "
                                                                 "frames when decoding (default: memory-bounded)")),
                  memory=("--max-memory", dict(help="e.g. 4GiB: the chunking is picked so that the model's estimated "
                                                    "memory fits (not with --chunk-frames)")))
    video_in = dict(frames=("--frames", dict(type=int, help="read at most this many frames")),
                    size=("--size", dict(help="HxW to resize to (multiples of the model's 8 or 16); default: "
                                              "centre-crop to the largest such size")))
    for name, help_, inputs in (("encode", "video file -> latent file (.safetensors)", True),
                                ("decode", "latent file -> video file, streamed", False),
                                ("roundtrip", "video -> latent -> video: PSNR, SSIM, time, memory, contact sheet",
                                 True)):
        p = sub.add_parser(name, help=help_)
        p.add_argument("input")
        p.add_argument("output")
        for flag, kw in list(common.values()) + (list(video_in.values()) if inputs else []):
            p.add_argument(flag, **kw)
        if name == "roundtrip":
            p.add_argument("--per-frame", action="store_true", help="print PSNR and SSIM of every frame")
            p.add_argument("--sheet", help="contact sheet PNG (default: OUTPUT with .png)")


def _say(msg):
    if _lead():
        print(msg, file=sys.stderr, flush=True)


def _lead():
    """Whether this process writes and prints: the only one, or rank 0 of a split."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _split(device):
    """``(group, device)``: under torchrun with more than one process, the default process group (initialised here)
    and this process's device (its local rank's GPU on CUDA); else ``(None, device)``."""
    world, local_rank = envs.torchrun()
    if world <= 1:
        return None, device
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.group.WORLD, device


def _vae(args, family=None):
    dtype = getattr(torch, args.dtype)
    group, device = _split(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kw = dict(dtype=dtype, device=device, chunk_frames=args.chunk_frames, max_memory=args.max_memory, progress=False,
              group=group)
    if args.weights:
        sd = load_state_dict(args.weights)
        entry, config = detect(sd)
        if config["z_dim"] != entry.released["z_dim"]:
            _say(f"note: z_dim={config['z_dim']} has no released latent statistics: latents are not normalised "
                 f"(mean 0, std 1)")
            kw.update(latents_mean=[0.0] * config["z_dim"], latents_std=[1.0] * config["z_dim"])
        return WRAPPERS[entry.name](z_dim=config["z_dim"], vae_pth=sd, **kw), True
    entry = get(family or args.model)
    _say(f"note: random weights ({entry.title}, released size): pass --weights; outputs and numbers mean nothing")
    return WRAPPERS[entry.name](vae_pth=None, **kw), False


def _size(text):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: expected HxW such as 480x832, got {text!r}") from None
    return h, w


def _stats(vae):
    return {"latents_mean": vae.mean.float().tolist(), "latents_std": vae.std.float().tolist()}


def _pieces(reader, vae, size, seen, keep):
    """The video's frames, fitted to the model, in pieces of PIECE_FRAMES as ``[3, t, H, W]`` on the model's device;
    ``seen`` collects the fitted size and the frame count, ``keep`` (a list, or None) the fitted uint8 frames."""
    from tqdm import tqdm
    group = []
    for frame in tqdm(reader, unit="frame", desc="encode", file=sys.stderr, disable=not _lead()):
        group.append(frame)
        if len(group) == PIECE_FRAMES:
            yield _fitted(group, vae, size, seen, keep)
            group = []
    if group:
        yield _fitted(group, vae, size, seen, keep)


def _fitted(group, vae, size, seen, keep):
    frames, note = fit_frames(torch.stack(group), vae.model.spec.space_factor, size)
    if note and "size" not in seen:
        _say(f"note: {note}")
    seen["size"] = list(frames.shape[1:3])
    seen["frames"] = seen.get("frames", 0) + frames.shape[0]
    if keep is not None:
        keep.append(frames)
    return to_clip(frames).to(vae.device)


def _encode_file(args, vae, keep=None):
    """The normalised latent of the input file, read as it goes; ``(z, fps, frames encoded, [H, W])``."""
    reader, seen = VideoReader(args.input, args.frames), {}
    with warnings.catch_warnings():
        # said below, in the command line's words
        warnings.filterwarnings("ignore", message="the video has|x: T=")
        pieces = _pieces(reader, vae, _size(args.size), seen, keep)
        if vae.split:  # the whole clip at once
            z = vae.encode([torch.cat(list(pieces), dim=1)])[0]
        else:
            z = vae.encode_frames(pieces)
    frames = vae.model.spec.video_frames(z.shape[1])
    if frames != seen["frames"]:
        _say(f"note: {seen['frames']} frames -> {frames} (the VAE takes 1 + 4k)")
    return z, reader.fps, frames, seen["size"]


def encode(args):
    vae, _ = _vae(args)
    z, fps, frames, (h, w) = _encode_file(args, vae)
    if not _lead():
        return
    save_latent(args.output, z.cpu(), {"family": vae.model.spec.family, "fps": fps, "frames": frames,
                                       "size": [h, w], **_stats(vae)})
    _say(f"{args.input}: {frames} frames of {h}x{w} -> {args.output} {list(z.shape)}")


def _check_latent(z, meta, vae, path):
    spec = vae.model.spec
    if meta["family"] != spec.family:
        raise ValueError(f"{path}: a latent of {meta['family']}, but the weights are {spec.family}'s")
    h, w = meta["size"]
    want = (vae.model.z_dim, spec.latent_frames(meta["frames"]), *vae.model.latent_size(h, w))
    if tuple(z.shape) != want:
        raise ValueError(f"{path}: the latent is {tuple(z.shape)} but its metadata (frames={meta['frames']}, size="
                         f"{h}x{w}) says {want}")
    for key, value in _stats(vae).items():
        if key in meta and torch.tensor(meta[key]).shape == torch.tensor(value).shape and \
                not torch.allclose(torch.tensor(meta[key]), torch.tensor(value)):
            raise ValueError(f"{path}: normalised with other {key} than these weights'")


def _stream(vae, z, out, fps, originals=None):
    """Decodes ``z`` into the video file ``out`` chunk by chunk; with ``originals`` (uint8 frames), PSNR/SSIM."""
    from tqdm import tqdm
    total = vae.model.spec.video_frames(z.shape[1])
    h, w = vae.model.video_size(*z.shape[2:])
    mses, ssims, sheet, done = [], [], [], 0
    picks = set(torch.linspace(0, total - 1, min(SHEET_FRAMES, total)).round().long().tolist())
    # split over processes: the whole video at once, on every rank
    chunks = [vae.decode([z])[0].cpu()] if vae.split else vae.decode_frames(z, output_device="cpu")
    if not _lead():
        return mses, ssims, sheet
    with written_atomically(out) as tmp, tqdm(total=total, unit="frame", desc="decode", file=sys.stderr) as bar:
        writer = VideoWriter(tmp, fps, h, w)
        try:
            for chunk in chunks:
                writer.write(chunk)
                if originals is not None:
                    ref = to_clip(originals[done:done + chunk.shape[1]])
                    mses += mse_frames(chunk, ref)
                    ssims += ssim_frames(chunk, ref)
                    sheet += [(originals[done + i], to_frames(chunk[:, i:i + 1])[0])
                              for i in range(chunk.shape[1]) if done + i in picks]
                done += chunk.shape[1]
                bar.update(chunk.shape[1])
        finally:
            writer.close()
    return mses, ssims, sheet


def decode(args):
    z, meta = load_latent(args.input)
    vae, _ = _vae(args, family=meta["family"])
    _check_latent(z, meta, vae, args.input)
    _stream(vae, z.to(vae.device), args.output, meta["fps"])
    _say(f"{args.input} -> {args.output}: {meta['frames']} frames of {meta['size'][0]}x{meta['size'][1]}")


def roundtrip(args):
    vae, trained = _vae(args)
    device, keep = torch.device(vae.device), []
    with PeakRSS(device) as mem:
        start = time.perf_counter()
        z, fps, used, _ = _encode_file(args, vae, keep)
        frames = torch.cat(keep)[:used]  # the originals, for the metrics
        encoded = time.perf_counter()
        mses, ssims, sheet = _stream(vae, z, args.output, fps, originals=frames)
        decoded = time.perf_counter()
    if not _lead():
        return
    if args.per_frame:
        for i, (m, s) in enumerate(zip(mses, ssims)):
            print(f"frame {i}: PSNR {psnr_db(m):.2f} dB  SSIM {s:.4f}")
    print(f"{args.input}: {len(mses)} frames of {frames.shape[1]}x{frames.shape[2]}, {vae.model.spec.family} "
          f"{args.dtype} on {device}: PSNR {psnr_db(sum(mses) / len(mses)):.2f} dB  SSIM "
          f"{sum(ssims) / len(ssims):.4f}  encode (with reading) {encoded - start:.2f} s  decode "
          f"{decoded - encoded:.2f} s  peak {mem.peak / 2 ** 20:.0f} MiB above the loaded model"
          + ("" if trained else "  (random weights: these mean nothing)"))
    sheet_path = Path(args.sheet or Path(args.output).with_suffix(".png"))
    _contact_sheet(sheet, sheet_path)
    print(f"contact sheet (originals left, decoded right): {sheet_path}")


def _contact_sheet(pairs, path):
    from PIL import Image
    rows = [torch.cat([a, b], dim=1) for a, b in pairs]
    with written_atomically(path) as tmp:
        Image.fromarray(torch.cat(rows, dim=0).numpy()).save(tmp, format="PNG")


def _closing(command):
    def run(args):
        try:
            command(args)
            if dist.is_initialized():
                # the ranks tear the group down together: a rank that destroyed it (and exited) while rank 0 was
                # still writing aborted in gloo now and then ("terminate called without an active exception")
                dist.barrier()
        finally:  # the group that _split made (under torchrun)
            if dist.is_initialized():
                dist.destroy_process_group()
    return run


COMMANDS = {"encode": _closing(encode), "decode": _closing(decode), "roundtrip": _closing(roundtrip)}
