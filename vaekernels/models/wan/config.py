"""The Wan VAEs' constants: released configurations, latent statistics, and reading a checkpoint's
configuration from its tensor shapes (so the released files and small test checkpoints load alike)."""
from __future__ import annotations

from ..checkpoint import CheckpointError

# Per-channel latent statistics of the released Wan2.1 VAE (z_dim = 16).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Per-channel latent statistics of the released Wan2.2 VAE (TI2V-5B, z_dim = 48).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

# Coefficients of the memory estimate (VAEModel.estimate_memory, see engine.memory_features for what they weigh),
# fitted to the peaks of the released models measured on CPU by benchmarks/memory_model.py (RESULTS.md), per kernel
# path: "amx" for bf16 on Sapphire Rapids (oneDNN convs); "default" (Winograd convs, float32, and bf16 without AMX)
# covers both AMD Zen 3's fit, less what the causal state's second copy weighed in this machine's fits before and
# after it went (the same bytes on any CPU), and the fit of Sapphire Rapids' float32 and bf16 with AMX off
WAN21_MEMORY = {"default": {"encode": (3.13, 20.96, 20.57), "decode": (1.21, 2.70, 29.12, 24.99)},
                "amx": {"encode": (2.91, 21.20, 2.95), "decode": (1.04, 2.65, 28.83, 5.59)}}
WAN22_MEMORY = {"default": {"encode": (4.10, 23.41, 31.94), "decode": (1.34, 3.02, 17.46, 22.24)},
                "amx": {"encode": (4.19, 19.72, 15.66), "decode": (1.29, 2.73, 15.55, 15.71)}}

# The architecture both released models share; dim, (dec_dim,) and z_dim are read from a checkpoint
ARCHITECTURE = dict(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
                    dropout=0.0)
WAN21_RELEASED = dict(dim=96, z_dim=16, **ARCHITECTURE)
WAN22_RELEASED = dict(dim=160, dec_dim=256, z_dim=48, **ARCHITECTURE)


def check_time_factor(dim_mult, temperal_downsample):
    if len(temperal_downsample) != len(dim_mult) - 1:
        raise ValueError(f"temperal_downsample needs {len(dim_mult) - 1} values for dim_mult={list(dim_mult)}, "
                         f"got {list(temperal_downsample)}")
    if sum(map(bool, temperal_downsample)) != 2:
        # the schedule (1+4k frames, 4 frames per latent frame) is built for Wan's time factor of 4
        raise ValueError(f"temperal_downsample must hold exactly two True values (a time factor of 4, as in "
                         f"the Wan VAEs), got {list(temperal_downsample)}")


def _shape(sd, key):
    return tuple(sd[key].shape) if key in sd else None


def wan21_config(sd: dict):
    """The Wan2.1 configuration of state dict ``sd``, or None if it is not a Wan2.1 VAE's (whose input conv takes
    the 3 RGB channels)."""
    first = _shape(sd, "encoder.conv1.weight")
    if first is None or len(first) != 5 or first[1] != 3 or "conv2.weight" not in sd:
        return None
    return dict(ARCHITECTURE, dim=first[0], z_dim=_shape(sd, "conv2.weight")[0],
                temperal_downsample=_time_downsamples(sd))


def _time_downsamples(sd: dict) -> list:
    """Which of the encoder's three resamples (at downsamples.2, .5 and .8 in ARCHITECTURE's layout) also downsample
    in time, read from which have a time conv: upstream's constructor default, [True, True, False], differs from the
    released [False, True, True]."""
    flags = [f"encoder.downsamples.{3 * i + 2}.time_conv.weight" in sd for i in range(3)]
    return flags if sum(flags) == 2 else list(ARCHITECTURE["temperal_downsample"])


def wan22_config(sd: dict):
    """The Wan2.2 configuration of ``sd``, or None if it is not a Wan2.2 VAE's (whose input conv takes 12
    channels: 2x2 patches of RGB)."""
    first, head = _shape(sd, "encoder.conv1.weight"), _shape(sd, "decoder.head.2.weight")
    if first is None or len(first) != 5 or first[1] != 12 or head is None or len(head) != 5 or "conv2.weight" not in sd:
        return None
    return dict(dim=first[0], dec_dim=head[1], z_dim=_shape(sd, "conv2.weight")[0], **ARCHITECTURE)


def expect(config, family: str, sd: dict) -> dict:
    """``config`` when the checkpoint is of ``family``, else a CheckpointError naming what was expected."""
    if config is None:
        raise CheckpointError(f"vae_pth: not a {family} VAE checkpoint (it has {len(sd)} tensors, e.g. "
                              f"{sorted(sd)[:3]}; a {family} VAE's encoder.conv1.weight takes "
                              f"{3 if family == 'Wan2.1' else 12} input channels)")
    return config
