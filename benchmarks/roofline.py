"""FLOPs and minimum memory traffic of every layer of each full-size VAE (Wan2.1, Wan2.2), and the H100 floor they
imply.

Writes benchmarks/ROOFLINE.md:  python benchmarks/roofline.py  (with the sharding model of shard_model.py)

Shapes come from walking the modules of the fast models (built on the meta device, so no weights are
allocated) with the specs' whole-clip rules: causal convs keep the frame count, the temporal
downsampler keeps frame 0 and convolves frames in pairs, the temporal upsampler keeps frame 0 and
doubles the rest; Wan2.2's video enters and leaves as 2x2 patches, and its stage shortcuts are layers of
their own (memory-bound: read the stage's input, write the stage's output size). Counted as
torch.utils.flop_counter counts: 2 FLOPs a multiply-add in convs and attention matmuls (checked against
flop_counter on python_ref, on the meta device, at 17x128x128); norms and softmax are listed at a few FLOPs an
element but left out of the tensor-core floor. Minimum bytes per layer: its weights, its inputs and its output
once, in bf16 (the fused kernels' ideal: a norm's output is the next conv's input, nearest upsampling happens
inside the conv).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import python_ref  # noqa: E402
from vaekernels.layers import AttentionBlock, CausalConv3d, Resample, ResidualBlock  # noqa: E402
from vaekernels.models import MODELS  # noqa: E402
from vaekernels.models.wan.blocks import DownStage, UpStage  # noqa: E402

# H100 SXM datasheet peaks (not measured): dense bf16 tensor-core math and HBM3 bandwidth
PEAK_FLOPS = 989e12
PEAK_BYTES = 3.35e12
BYTES = 2  # bf16
# family -> (its python_ref module class, the sizes of its GPU cases (H, W, T))
FAMILIES = {"wan2.1": (python_ref.wan21_vae.WanVAE_, [(480, 832, 81), (720, 1280, 81)]),
            "wan2.2": (python_ref.wan22_vae.WanVAE_, [(480, 832, 81), (704, 1280, 121)])}


@dataclass
class Layer:
    name: str
    kind: str
    flops: float  # matmul/conv FLOPs (tensor-core work)
    bytes: float
    other_flops: float = 0.0  # elementwise work (norms, softmax), not in the tensor-core floor
    shape_in: tuple = ()  # (C, T, H, W) of its input, for the sharding model (benchmarks/shard_model.py)
    halo_rows: int = 0  # rows of its input a band needs from each neighbour (a 3x3 conv: 1)
    gathers: bool = False  # needs the whole frame (attention's keys and values)
    triton: str = ""  # the Triton conv it runs on, as the kernel report names its variants ("causal_conv3d 3x3x3 ...")

    @property
    def floor_s(self):
        return max(self.flops / PEAK_FLOPS, self.bytes / PEAK_BYTES)


class Walk:
    """Follows a clip's shape ``(C, T, H, W)`` through the modules, recording every layer."""

    def __init__(self):
        self.layers: list[Layer] = []

    def conv(self, name, cout, cin, kernel, shape_in, shape_out, residual=False, weights=None, triton=None):
        kt, kh, kw = kernel
        positions = math.prod(shape_out[1:])
        weight_elems = weights if weights is not None else cout * cin * kt * kh * kw + cout
        traffic = weight_elems + math.prod(shape_in) + math.prod(shape_out) * (2 if residual else 1)
        self.layers.append(Layer(name, f"conv {kt}x{kh}x{kw} {cin}->{cout}", 2.0 * cout * cin * kt * kh * kw * positions,
                                 traffic * BYTES, shape_in=tuple(shape_in), halo_rows=kh // 2,
                                 triton=triton or f"causal_conv3d {kt}x{kh}x{kw} {cin}->{cout}"))
        return shape_out

    def causal_conv(self, name, conv: CausalConv3d, shape, residual=False):
        c, t, h, w = shape
        (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = conv.kernel_size, conv.stride, conv.padding
        out = (conv.out_channels, (t + 2 * pt - kt) // st + 1, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        return self.conv(name, conv.out_channels, c, conv.kernel_size, shape, out, residual)

    def norm(self, name, shape):
        n = math.prod(shape)
        self.layers.append(Layer(name, f"rms_norm_silu C={shape[0]}", 0.0, 2 * n * BYTES, other_flops=6.0 * n))
        return shape

    def residual_block(self, name, block: ResidualBlock, shape):
        h = self.causal_conv(f"{name}.residual.2", block.residual[2], self.norm(f"{name}.residual.0", shape))
        if block.shortcut is not None:
            self.causal_conv(f"{name}.shortcut", block.shortcut, shape)
        return self.causal_conv(f"{name}.residual.6", block.residual[6], self.norm(f"{name}.residual.3", h),
                                residual=True)

    def attention_block(self, name, block: AttentionBlock, shape):
        c, t, h, w = shape
        self.norm(f"{name}.norm", shape)
        self.conv(f"{name}.to_qkv", 3 * c, c, (1, 1, 1), shape, (3 * c, t, h, w))
        seq = h * w
        self.layers.append(Layer(f"{name}.attention", f"attention L={seq} D={c}", 4.0 * t * seq * seq * c,
                                 4 * t * seq * c * BYTES, other_flops=5.0 * t * seq * seq, shape_in=tuple(shape),
                                 gathers=True))
        return self.conv(f"{name}.proj", c, c, (1, 1, 1), shape, shape, residual=True)

    def resample(self, name, block: Resample, shape):
        c, t, h, w = shape
        conv = block.resample[1]
        if block.mode.startswith("up"):
            if block.mode == "upsample3d":  # frame 0 passes; every later frame becomes two
                tc = block.time_conv
                self.conv(f"{name}.time_conv", tc.out_channels, c, tc.kernel_size, (c, t - 1, h, w),
                          (tc.out_channels, t - 1, h, w), triton=f"causal_conv3d 3x1x1 {c}->{c}")  # two halves
                t = 1 + 2 * (t - 1)
            return self.conv(f"{name}.resample.1", conv.out_channels, c, (1, 3, 3), (c, t, h, w),
                             (conv.out_channels, t, 2 * h, 2 * w), triton=f"upsample_conv2d 1x3x3 {c}->{conv.out_channels}")
        # zero pad 1 on the right and bottom, 3x3 stride 2
        out = (c, t, (h + 1 - 3) // 2 + 1, (w + 1 - 3) // 2 + 1)
        self.conv(f"{name}.resample.1", c, c, (1, 3, 3), shape, out, triton=f"causal_conv3d 1x3x3/1x2x2 {c}->{c}")
        if block.mode == "downsample3d":  # frame 0 passes; frames 2j-2, 2j-1, 2j give frame j
            t_out = 1 + (t - 1) // 2
            self.conv(f"{name}.time_conv", c, c, block.time_conv.kernel_size, (c, t, *out[2:]),
                      (c, t_out - 1, *out[2:]), triton=f"causal_conv3d 3x1x1/2x1x1 {c}->{c}")
            out = (c, t_out, *out[2:])
        return out

    def shortcut(self, name, kind, shape_in, shape_out):
        """A parameter-free shortcut (avg_down3d, dup_up3d): no FLOPs worth counting, one read and one write."""
        self.layers.append(Layer(name, kind, 0.0, (math.prod(shape_in) + math.prod(shape_out)) * BYTES,
                                 other_flops=float(math.prod(shape_out))))

    def down_stage(self, name, stage: DownStage, shape):
        out = shape
        for i, module in enumerate(stage.downsamples):
            out = self.block(f"{name}.downsamples.{i}", module, out)
        if not stage.avg_shortcut.identity:
            self.shortcut(f"{name}.avg_shortcut", f"avg_down3d {shape[0]}->{out[0]}", shape, out)
        return out

    def up_stage(self, name, stage: UpStage, shape):
        out = shape
        for i, module in enumerate(stage.upsamples):
            out = self.block(f"{name}.upsamples.{i}", module, out)
        if stage.avg_shortcut is not None:
            self.shortcut(f"{name}.avg_shortcut", f"dup_up3d {shape[0]}->{out[0]}", shape, out)
        return out

    def block(self, name, module, shape):
        if isinstance(module, ResidualBlock):
            return self.residual_block(name, module, shape)
        if isinstance(module, AttentionBlock):
            return self.attention_block(name, module, shape)
        if isinstance(module, DownStage):
            return self.down_stage(name, module, shape)
        if isinstance(module, UpStage):
            return self.up_stage(name, module, shape)
        return self.resample(name, module, shape)


def encode_layers(model, t, h, w):
    walk, enc = Walk(), model.encoder
    p = model.spec.patch_size  # the patches are one copy the video makes anyway: no layer of their own
    shape = walk.causal_conv("encoder.conv1", enc.conv1, (enc.conv1.in_channels, t, h // p, w // p))
    for prefix, blocks in (("encoder.downsamples", enc.downsamples), ("encoder.middle", enc.middle)):
        for i, module in enumerate(blocks):
            shape = walk.block(f"{prefix}.{i}", module, shape)
    shape = walk.causal_conv("encoder.head.2", enc.head[2], walk.norm("encoder.head.0", shape))
    walk.causal_conv("conv1", model.conv1, shape)
    return walk.layers


def decode_layers(model, t, h, w):
    walk, dec = Walk(), model.decoder
    shape = walk.causal_conv("conv2", model.conv2, (model.z_dim, t, h, w))
    shape = walk.causal_conv("decoder.conv1", dec.conv1, shape)
    for prefix, blocks in (("decoder.middle", dec.middle), ("decoder.upsamples", dec.upsamples)):
        for i, module in enumerate(blocks):
            shape = walk.block(f"{prefix}.{i}", module, shape)
    walk.causal_conv("decoder.head.2", dec.head[2], walk.norm("decoder.head.0", shape))
    return walk.layers


def flop_counter_check(family, model, t=17, h=128, w=128):
    """torch.utils.flop_counter's totals of python_ref (on the meta device: shapes only) for the family at a small
    clip, to check the walk's counting against."""
    from torch.utils.flop_counter import FlopCounterMode

    ref_class = FAMILIES[family][0]
    config = {k: v for k, v in MODELS[family].released.items()}
    with torch.device("meta"):
        ref = ref_class(**config)
        video = torch.zeros(1, 3, t, h, w)
        z = torch.zeros(1, model.z_dim, 1 + (t - 1) // 4, *model.latent_size(h, w))
        counts = {}
        for name, run in (("encode", lambda: ref.encode(video, [0.0, 1.0])), ("decode", lambda: ref.decode(z, [0.0, 1.0]))):
            with FlopCounterMode(display=False) as counter:
                run()
            counts[name] = counter.get_total_flops()
    return counts


# H100 SXM: 132 SMs at 1830 MHz give the datasheet's 989 TFLOP/s: 2048 dense bf16 multiply-adds a clock per SM;
# each of an SM's 4 schedulers issues one instruction a clock
MACS_PER_CLOCK = PEAK_FLOPS / 2 / 132 / 1.83e9
SCHEDULERS = 4


def triton_estimates():
    """{Triton conv (``Layer.triton``): (estimated fraction of the tensor-core peak, tile use, issue ceiling)} for
    the models' bf16 variants, from the kernel report's sm_90 compiles (vaekernels.kernel_report; compiles them,
    minutes). Tile use: the share of the dot work that is not padding (N and K tiles). Issue ceiling: a K step's
    tensor-core time (BLOCK_M x N x K multiply-adds) over the time the CTA's warps take to issue that step's
    instructions, capped at 1. Their product ignores memory stalls and latency: a ceiling, not a prediction."""
    import re

    from vaekernels import kernel_report

    found = {}
    for (module, _, arch), r in kernel_report.reports().items():
        if module != "models" or arch != 90 or not r.tensor_cores_expected:
            continue
        op = r.kernel.split(": ", 1)[1].split(" bf16")[0]
        cfg = dict(re.findall(r"(\w+)=(\w+)", r.config))
        k, warps = int(cfg["BLOCK_K"]), int(cfg["warps"])
        cin, cout = map(int, op.rsplit(" ", 1)[1].split("->"))
        kt, kh, kw = map(int, op.split(" ")[1].split("/")[0].split("x"))
        if "BLOCK_J" in cfg:  # the narrow kernel: rows a window of input pixels, columns (spatial tap, channel)
            rows, width = int(cfg["TILE_H"]) * int(cfg["TILE_W"]), int(cfg["BLOCK_J"])
            outputs = (int(cfg["TILE_H"]) - kh + 1) * (int(cfg["TILE_W"]) - kw + 1)
            use = cout * kh * kw / width * outputs / rows * cin / (math.ceil(cin / k) * k)
        else:
            rows, width = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]) + int(cfg["BLOCK_N2"])
            depth = cin * kt * kh * kw if cfg["PACKED"] == "True" else cin
            use = cout / (math.ceil(cout / width) * width) * depth / (math.ceil(depth / k) * k)
        ceiling = min(1.0, (rows * width * k / MACS_PER_CLOCK) / (warps * r.loop_instrs / SCHEDULERS))
        estimate = (use * ceiling, use, ceiling)
        found[op] = min(found.get(op, estimate), estimate)  # the worst of its variants (residual, alignment)
    return found


def passes(model, h, w, t):
    h_lat, w_lat = model.latent_size(h, w)
    return {"encode": encode_layers(model, t, h, w), "decode": decode_layers(model, 1 + (t - 1) // 4, h_lat, w_lat)}


def totals(layers):
    flops = sum(l.flops for l in layers)
    nbytes = sum(l.bytes for l in layers)
    return flops, nbytes, sum(l.floor_s for l in layers)


def render(estimates=None):
    out = ["# Roofline of the VAEs (full size, released configurations), bf16",
           "", "Generated by `python benchmarks/roofline.py`; see its docstring for what is counted.",
           f"Peaks assumed (H100 SXM **datasheet** numbers, not measurements): dense bf16 tensor-core "
           f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s, HBM3 {PEAK_BYTES / 1e12:.2f} TB/s. A layer's floor is "
           "max(FLOPs / peak FLOP/s, minimum bytes / peak bandwidth); the pass's floor is their sum.", ""]
    totals_rows, details, checks = [], [], []
    for family, (_, sizes) in FAMILIES.items():
        entry = MODELS[family]
        with torch.device("meta"):
            model = entry.model_class(**entry.released)
        counted = flop_counter_check(family, model)
        for name, layers in passes(model, 128, 128, 17).items():
            f = totals(layers)[0]
            checks.append(f"| {entry.title} | {name} | {f / 1e9:.1f} GFLOP | {counted[name] / 1e9:.1f} GFLOP | "
                          f"{f / counted[name]:.4f} |")
        for h, w, t in sizes:
            for name, layers in passes(model, h, w, t).items():
                flops, nbytes, floor = totals(layers)
                mem_bound = sum(l.floor_s for l in layers if l.bytes / PEAK_BYTES > l.flops / PEAK_FLOPS)
                totals_rows.append(
                    f"| {entry.title} | {h}x{w}x{t} | {name} | {flops / 1e12:.1f} TFLOP | "
                    f"{sum(l.other_flops for l in layers) / 1e12:.2f} TFLOP | {nbytes / 1e9:.1f} GB | "
                    f"{flops / PEAK_FLOPS * 1e3:.0f} ms | {nbytes / PEAK_BYTES * 1e3:.0f} ms | "
                    f"{floor * 1e3:.0f} ms | {mem_bound / floor:.0%} of the floor |")
                details.append((f"{entry.title} {h}x{w}x{t} {name}", layers))
    out += ["## Check against torch.utils.flop_counter on python_ref (17x128x128)", "",
            "| model | pass | counted here | flop_counter | ratio |", "|---|---|---|---|---|"] + checks
    out += ["", "## Totals", "",
            "| model | size (HxWxT) | pass | conv+attention FLOPs | elementwise FLOPs | min bytes | compute floor | "
            "memory floor | per-layer floor | share of layers memory-bound |",
            "|---|---|---|---|---|---|---|---|---|---|"] + totals_rows
    estimates = triton_estimates() if estimates is None else estimates
    out += ["", "## Triton conv estimates (sm_90, bf16)", "",
            "Per layer below: the estimated fraction of the tensor-core peak its Triton kernel can reach "
            "(`triton_estimates`: tile use x issue ceiling, from the compiled SASS of the variant the model launches; "
            "a ceiling that ignores memory stalls, not a measurement). Attention runs PyTorch's SDPA on CUDA. Per pass: "
            "the sum over layers of max(FLOPs / (peak x estimate), bytes / bandwidth), other layers at their floor.", "",
            "| pass | floor | Triton estimate | of the tensor-core peak |", "|---|---|---|---|"]
    for title, layers in details:
        est_s = sum(max(l.flops / (PEAK_FLOPS * estimates[l.triton][0]), l.bytes / PEAK_BYTES)
                    if l.triton in estimates else l.floor_s for l in layers)
        out.append(f"| {title} | {totals(layers)[2] * 1e3:.0f} ms | {est_s * 1e3:.0f} ms | "
                   f"{totals(layers)[0] / PEAK_FLOPS / est_s:.0%} |")
    for title, layers in details:
        out += ["", f"## Layers: {title}", "",
                "| layer | op | GFLOP | MB | floor (ms) | bound | Triton est. of peak (tile use x issue) |",
                "|---|---|---|---|---|---|---|"]
        for l in layers:
            bound = "memory" if l.bytes / PEAK_BYTES > l.flops / PEAK_FLOPS else "compute"
            est = estimates.get(l.triton) if l.triton else None
            est_text = f"{est[0]:.0%} ({est[1]:.0%} x {est[2]:.0%})" if est else "-"
            out.append(f"| {l.name} | {l.kind} | {l.flops / 1e9:.1f} | {l.bytes / 1e6:.1f} | {l.floor_s * 1e3:.3f} | "
                       f"{bound} | {est_text} |")
    return "\n".join(out) + "\n"


def main():
    import shard_model  # its section is written here too; it reads this module's walk

    path = Path(__file__).with_name("ROOFLINE.md")
    path.write_text(render() + "\n" + shard_model.render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
