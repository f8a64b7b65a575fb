"""On paper: each VAE split over R GPUs by bands of rows (the issue "Exact multi-device encode and decode"), the halo
bytes each layer exchanges, and the scaling it implies on NVLink. Written into benchmarks/ROOFLINE.md by
``python benchmarks/roofline.py`` (this module renders its section).

The model. Every layer's shapes and floor come from the roofline walk (roofline.py: datasheet peaks, a layer's floor
is max(FLOPs / peak, minimum bytes / bandwidth)). Bands are whole latent rows (so every stride-2 downsample and 2x
upsample splits evenly); the largest band, ceil(h/R) latent rows, sets the time. Each band carries a border row above
and below at every level, which every layer computes too (vaekernels/layers/bands.py): a layer with input rows costs
(band rows + 2) / rows of its one-GPU floor (the norms and shortcuts, listed without their rows: the band's share).
A layer whose kernel spans 3 rows
needs 1 row of its input from each neighbour per chunk (the stride-2 downsample: 1; the upsampling conv: 1 row at
the low resolution); attention gathers its keys and values from every rank (an all-gather); the default API
gathers the output on every rank (an all-gather of the video, or of the latent). Time per rank without overlap:
its band's floor + bytes received / NVLink bandwidth per direction + a latency per exchange step (2 neighbours, every
3x3 layer, every chunk; chunks from the CUDA budget of 1 GiB per activation, planned for the whole frame as the split
runs them). Efficiency:
one GPU's floor / (R x that). The break-even band is the height at which a band's floor equals the exchanges it
needs: below it, splitting further costs more in exchange than it saves in compute. The floor is the hardest case
for scaling (real kernels are slower than their floor, so the exchange weighs less), and halo exchange can overlap
the band's interior, which this model does not count.
"""
from __future__ import annotations

import math

import torch

from roofline import BYTES, MODELS, passes

# datasheet figures (not measured): dense bf16 tensor-core FLOP/s, HBM bytes/s, NVLink 4 bytes/s per direction
# (900 GB/s per GPU in total)
GPUS = {"H100 SXM": (989e12, 3.35e12, 450e9), "H200 SXM": (989e12, 4.8e12, 450e9)}
LATENCY_S = 10e-6  # per exchange step: an assumption for NCCL point-to-point of small messages, not a datasheet value
WORLD_SIZES = (2, 4, 8)
SIZES = [(480, 832, 81), (720, 1280, 81)]
CHUNK_BYTES = 1 << 30  # the engine's CUDA budget for the largest activation of a chunk


def _floor(layer, flops_s, bytes_s):
    return max(layer.flops / flops_s, layer.bytes / bytes_s)


def _chunks(model, kind, h, w, t, rows_share=1.0):
    """Chunks of the engine's default schedule for frames holding ``rows_share`` of the rows (a split plans them for
    the whole frame: 1)."""
    f = model.spec.time_factor
    if kind == "encode":
        frame = model.encoder_frame_elements(h, w) * BYTES * rows_share
        return math.ceil(t / max(1, CHUNK_BYTES // frame))
    t_lat = model.spec.latent_frames(t)
    frame = model.decoder_frame_elements(*model.latent_size(h, w)) * BYTES * rows_share
    return math.ceil(t_lat / max(1, CHUNK_BYTES // (f * frame)))


def _share(layer, band):
    """The share of ``layer``'s rows a bordered band of ``band`` of every level's rows computes."""
    if not layer.shape_in:
        return band
    rows = layer.shape_in[2]
    return min(1.0, (band * rows + 2) / rows)


def split(model, kind, layers, h, w, t, world, gpu):
    """Per-rank seconds of one pass at world size ``world``: (compute, halo, latency, gathers), and the one-GPU
    floor."""
    flops_s, bytes_s, link = GPUS[gpu]
    h_lat = model.latent_size(h, w)[0]
    band = math.ceil(h_lat / world) / h_lat  # the largest band's share of every level's rows
    chunks = _chunks(model, kind, h, w, t)
    one = sum(_floor(l, flops_s, bytes_s) for l in layers)
    compute = sum(_floor(l, flops_s, bytes_s) * _share(l, band) for l in layers)
    halo_bytes = steps = gather_bytes = 0.0
    for l in layers:
        if l.halo_rows:
            c, frames, _, width = l.shape_in
            halo_bytes += 2 * l.halo_rows * frames * width * c * BYTES  # from both neighbours (an inner band)
            steps += chunks
        if l.gathers:
            c, frames, rows, width = l.shape_in
            gather_bytes += 2 * (world - 1) / world * frames * rows * width * c * BYTES  # keys and values
    spec = model.spec
    if kind == "decode":
        out = spec.video_channels * t * h * w * BYTES
    else:
        out = 2 * spec.z_dim * spec.latent_frames(t) * math.prod(model.latent_size(h, w)) * BYTES
    gather_bytes += (world - 1) / world * out
    return compute, halo_bytes / link, steps * LATENCY_S, gather_bytes / link, one


def break_even_rows(model, kind, layers, h, w, t, gpu):
    """The band height (in output rows) at which a band's floor equals its halo exchange (bytes and latency)."""
    flops_s, bytes_s, link = GPUS[gpu]
    h_lat = model.latent_size(h, w)[0]
    per_latent_row = sum(_floor(l, flops_s, bytes_s) for l in layers) / h_lat
    _, halo, latency, _, _ = split(model, kind, layers, h, w, t, 2, gpu)
    return (halo + latency) / per_latent_row * h / h_lat


def render():
    out = ["## Sharding by rows over several GPUs, on paper (benchmarks/shard_model.py)", "",
           __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
           f"Figures: {', '.join(f'{g}: {f / 1e12:.0f} TFLOP/s bf16, {b / 1e12:.2f} TB/s HBM, NVLink {n / 1e9:.0f} GB/s per direction' for g, (f, b, n) in GPUS.items())} "
           f"(datasheets); {LATENCY_S * 1e6:.0f} us per exchange step (assumed).", "",
           "| GPU | model | size (HxWxT) | pass | R | largest band (latent rows) | band floor | halo | latency | "
           "gathers | efficiency |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    even = []
    for gpu in GPUS:
        for family, entry in MODELS.items():
            with torch.device("meta"):
                model = entry.model_class(**entry.released)
            for h, w, t in SIZES:
                h_lat = model.latent_size(h, w)[0]
                for kind, layers in passes(model, h, w, t).items():
                    for world in WORLD_SIZES:
                        compute, halo, latency, gathers, one = split(model, kind, layers, h, w, t, world, gpu)
                        eff = one / (world * (compute + halo + latency + gathers))
                        out.append(f"| {gpu} | {entry.title} | {h}x{w}x{t} | {kind} | {world} | "
                                   f"{math.ceil(h_lat / world)} of {h_lat} | {compute * 1e3:.1f} ms "
                                   f"| {halo * 1e3:.2f} ms | {latency * 1e3:.2f} ms | {gathers * 1e3:.2f} ms | "
                                   f"{eff:.0%} |")
                    if gpu == next(iter(GPUS)):
                        rows = break_even_rows(model, kind, layers, h, w, t, gpu)
                        even.append(f"| {entry.title} | {h}x{w}x{t} | {kind} | {rows:.1f} output rows "
                                    f"({rows / model.spec.space_factor:.2f} latent rows) |")
    out += ["", f"Break-even band height ({next(iter(GPUS))}): a band this tall costs as much in halo exchange as in "
                "compute at the floor; every band the sharding makes is whole latent rows, so a split pays while "
                "each band keeps well above it.", "",
            "| model | size | pass | break-even band |", "|---|---|---|---|"] + even
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render())
