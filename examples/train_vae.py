"""Train a small Wan2.1-architecture VAE (or fine-tune its decoder) on synthetic moving clips, on CPU, through the
fused ops.

    python examples/train_vae.py [--steps 300] [--weights model.safetensors] [--save tuned.safetensors]
    # the demo's model from scratch (40 min on 2 cores): single frames, then 17-frame clips
    python examples/train_vae.py --train all --steps 3000 --frames 1 --size 64 --canvas 128 --batch 4 \
        --clips 4096 --distance mse --lr 3e-5 --save stage1.safetensors
    python examples/train_vae.py --train all --weights stage1.safetensors --steps 2400 --warmup 100 \
        --frames 17 --size 64 --canvas 128 --batch 1 --clips 1024 --distance mse --lr 1e-5 \
        --save-dtype float16 --save wan21_demo.safetensors

``--train decoder`` (default) fine-tunes the decoder (and the latent's 1x1 conv) with the encoder frozen (its
parameters do not require grad), so the KL term of ``model.elbo``'s loss does not move; ``--train all`` trains the
whole VAE on the ELBO. Each step draws a batch from a fixed synthetic set (``vaekernels.demo.random_clips``: windows
of ``--size`` pixels of ``--canvas``-pixel moving scenes, the demo's kind of clip) and a reparameterised sample from
the posterior. Nine frames (three latent frames) show the decoder a chunk whose causal state comes from a whole
chunk before it, as every later chunk of a long clip does. Every ``--log`` steps it prints the mean loss of those
steps; the loss goes down. Without ``--weights`` the model starts from a seeded random init (zero biases, an image
model run frame by frame: see ``initial_model`` and ``per_frame_init``), so that it runs anywhere. A run from another
run's weights keeps that run's record in the saved file's metadata ("started_from").
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vaekernels import WanVAEModel
from vaekernels.demo import made_by_record, random_clips
from vaekernels.layers.blocks import AttentionBlock
from vaekernels.layers.conv import CausalConv3d
from vaekernels.models import load_state_dict


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", choices=("decoder", "all"), default="decoder",
                   help="what learns: the decoder, the encoder frozen (default), or the whole VAE")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--dim", type=int, default=16, help="the model's base width (default 16; the released 96)")
    p.add_argument("--z-dim", type=int, default=16, help="latent channels (default 16)")
    p.add_argument("--frames", type=int, default=5, help="frames per clip, 1 + 4k (default 5)")
    p.add_argument("--size", type=int, default=32, help="frame height and width (default 32)")
    p.add_argument("--canvas", type=int, default=128,
                   help="the synthetic scenes' size in pixels, of which each clip is a --size window (default 128, "
                        "the demo's frame size: features as large as there)")
    p.add_argument("--batch", type=int, default=2, help="clips per step (default 2)")
    p.add_argument("--clips", type=int, default=64, help="clips in the synthetic training set (default 64)")
    p.add_argument("--lr", type=float, default=4e-5, help="Adam's learning rate (default 4e-5, see initial_model)")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (default 0)")
    p.add_argument("--beta", type=float, default=1e-4, help="the ELBO's KL weight (default 1e-4)")
    p.add_argument("--distance", choices=("l1", "mse"), default="l1",
                   help="the reconstruction term: L1 (default) or squared distance")
    p.add_argument("--mean", action="store_true",
                   help="decode the posterior mean instead of a draw (the KL still counts)")
    p.add_argument("--log", type=int, default=25, help="print the mean loss every this many steps (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", help="start from this checkpoint (.safetensors or .pth) instead of a random init")
    p.add_argument("--save", help="write the weights here (.safetensors)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32",
                   help="the saved tensors' dtype (float16: half the file)")
    args = p.parse_args(argv)
    for name in ("steps", "dim", "z_dim", "frames", "size", "batch", "clips", "log"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    if args.canvas < args.size:
        p.error(f"--canvas must be at least --size ({args.size}), got {args.canvas}")
    if (args.frames - 1) % 4:
        p.error(f"--frames must be 1 + 4k (the VAE's time compression), got {args.frames}")
    if args.size % 8:
        p.error(f"--size must be a multiple of 8 (the VAE's space compression), got {args.size}")
    return args


def initial_model(args) -> WanVAEModel:
    """The model before training: ``--weights``, or a seeded init with zero biases."""
    torch.manual_seed(args.seed)
    model = WanVAEModel(dim=args.dim, z_dim=args.z_dim)
    if args.weights:
        model.load_state_dict(load_state_dict(args.weights))
    else:
        # From a fresh init with Adam at 1e-3 the loss sat at the data's variance (the decoder putting out the mean
        # clip) for a thousand steps and more, whatever the init (zero biases, a warm-up, the MSE distance); at 3e-5
        # it fell from the first steps (1-frame windows, batch 16: 0.074 after 200 steps against 0.209 at 1e-3;
        # python_ref's autograd traced the same losses: the architecture's, not the kernels'). Zero biases, and
        # log_var starting at -8 (a draw's noise, std 0.02, does not drown the small initial mean; the KL term
        # raises it where the reconstruction allows).
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.zeros_(param)
        with torch.no_grad():
            model.conv1.bias[args.z_dim:] = -8.0  # conv1 puts out (mu, log_var) on channels
            per_frame_init(model)
    return model


def per_frame_init(model: WanVAEModel) -> None:
    """Start as an image model run frame by frame: every 3x3x3 conv reads only the frame it stands on (its taps on
    the two frames before are zero), a downsampler's time conv passes the middle frame of its window, both frames an
    upsampler makes copy the frame it reads, and the attentions add nothing (their output conv zero, as upstream
    inits it). Training on single frames then trains all but the taps on earlier frames, which see only zeros there
    (no gradient: they stay as they start), and clips train those next. Left at their random init, those taps made
    every frame after the first of a clip noise (the demo's clip at 11 dB against 22 with them zero, same trained
    weights otherwise); and from a random init the time convs learnt slowly (1-frame windows reached in 200 steps
    what 9-frame clips had not in 1000)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AttentionBlock):
                torch.nn.init.zeros_(module.proj.weight)
            conv = getattr(module, "time_conv", None)
            if isinstance(module, CausalConv3d) and module.weight.shape[2:] == (3, 3, 3):
                module.weight[:, :, :2] = 0  # tap 2 reads the output's own frame (causal padding in front)
            if conv is None:
                continue
            w = conv.weight  # [out, in, 3, 1, 1]
            w.zero_()
            eye = torch.eye(w.shape[1])
            if w.shape[0] == w.shape[1]:  # downsampler: frames 2j-2, 2j-1, 2j -> the middle one
                w[:, :, 1, 0, 0] = eye
            else:  # upsampler: channels [s*C, (s+1)*C) make output frame s of each pair; tap 2 reads the frame
                w[:, :, 2, 0, 0] = torch.cat([eye, eye])


def train(args, out=sys.stdout) -> list[float]:
    """Run the training (or fine-tune); return each step's loss."""
    model = initial_model(args)
    model.requires_grad_(False)
    trained = [model.decoder, model.conv2] if args.train == "decoder" else [model]
    for module in trained:
        module.requires_grad_(True)
    params = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    # a linear warm-up from lr / 100 over --warmup steps (Adam's first steps are full-size whatever the gradient),
    # then a cosine down to lr / 10: the last steps settle instead of jumping about
    warmup = min(args.warmup, args.steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps - warmup, eta_min=args.lr / 10)
    schedule = cosine if warmup == 0 else torch.optim.lr_scheduler.SequentialLR(
        optimizer, [torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=warmup), cosine], [warmup])
    gen = torch.Generator().manual_seed(args.seed)
    data = random_clips(args.clips, args.frames, args.size, args.size, gen, canvas=args.canvas)
    losses, start = [], time.perf_counter()
    print(f"training {'the decoder of ' if args.train == 'decoder' else ''}WanVAEModel(dim={args.dim}, "
          f"z_dim={args.z_dim}): "
          f"{sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"clips {args.frames}x{args.size}x{args.size} (of {args.canvas}x{args.canvas} scenes), batch {args.batch}",
          file=out, flush=True)
    for step in range(args.steps):
        pick = torch.randint(args.clips, (args.batch,), generator=gen)
        terms = model.elbo(data[pick], args.beta, distance=args.distance, generator=gen, deterministic=args.mean)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(terms.loss.item())
        if (step + 1) % args.log == 0 or step + 1 == args.steps:
            recent = losses[-args.log:]
            print(f"step {step + 1:5d}  loss {sum(recent) / len(recent):.4f}  "
                  f"({time.perf_counter() - start:.0f} s)", file=out, flush=True)
            if args.save:  # at every log line, so that an interrupted run keeps its latest weights
                save(model, args, step + 1, sum(recent) / len(recent))
    if args.save:
        print(f"saved {args.save}", file=out)
    return losses


def save(model: WanVAEModel, args, steps: int, loss: float) -> None:
    """Write the weights as safetensors, with how they were made (the arguments, steps done, recent loss) in the
    file's metadata."""
    from safetensors.torch import save_file

    dtype = getattr(torch, args.save_dtype)
    made = {"script": "examples/train_vae.py", "arguments": vars(args), "steps_done": steps,
            "recent_loss": round(loss, 5)}
    before = made_by_record(args.weights) if args.weights else None
    if before:  # the run it went on from, so the chain is kept
        made["started_from"] = before
    save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, args.save,
              metadata={"made_by": json.dumps(made)})


if __name__ == "__main__":
    train(parse(sys.argv[1:]))
