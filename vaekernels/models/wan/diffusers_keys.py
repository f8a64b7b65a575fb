"""diffusers' ``AutoencoderKLWan`` parameter names -> ours (the official code's), and its config -> our models.

diffusers nests the stages as blocks of ``resnets`` plus one resampler and names the layers inside a residual
block; the official code (and so this package) numbers the layers of ``nn.Sequential``s. Wan2.1 keeps its
stages flat, Wan2.2 (``is_residual``) nests them one level. Written from the two models' state dicts, and checked
against both by the tests.
"""
from __future__ import annotations

import re

from .wan21 import WanVAEModel
from .wan22 import Wan22VAEModel

# inside a residual block: diffusers' layer name -> its index in the official ``residual`` Sequential
_RESIDUAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
             "conv_shortcut": "shortcut"}
_ENDS = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
_MIDDLE = {("resnets", "0"): "0", ("attentions", "0"): "1", ("resnets", "1"): "2"}


def _residual(rest: str) -> str:
    layer, _, tail = rest.partition(".")
    if layer not in _RESIDUAL:
        raise KeyError(rest)
    return f"{_RESIDUAL[layer]}.{tail}"


def ours(key: str, nested: bool, num_res_blocks: int) -> str:
    """Our name of diffusers' parameter ``key`` (``nested``: Wan2.2's layout); KeyError for a name not in it."""
    if key in ("quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias"):
        return ("conv1." if key.startswith("quant") else "conv2.") + key.rpartition(".")[2]
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(\w+)", key)
    if m:
        return f"{m[1]}.{_ENDS[m[2]]}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m and (m[2], m[3]) in _MIDDLE:
        rest = _residual(m[4]) if m[2] == "resnets" else m[4]
        return f"{m[1]}.middle.{_MIDDLE[(m[2], m[3])]}.{rest}"
    r = num_res_blocks
    if nested:
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(?:resnets\.(\d+)|downsampler)\.(.+)", key)
        if m:
            return f"encoder.downsamples.{m[1]}.downsamples.{m[2] or r}." + (_residual(m[3]) if m[2] else m[3])
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsampler)\.(.+)", key)
        if m:
            return f"decoder.upsamples.{m[1]}.upsamples.{m[2] or r + 1}." + (_residual(m[3]) if m[2] else m[3])
    else:
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
        if m:  # flat already: residual blocks and resamplers in one list
            rest = m[2] if m[2].startswith(("resample.", "time_conv.")) else _residual(m[2])
            return f"encoder.downsamples.{m[1]}.{rest}"
        # a decoder stage is num_res_blocks + 1 residual blocks and (but the last) an upsampler
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.(.+)", key)
        if m:
            index = int(m[1]) * (r + 2) + (int(m[2]) if m[2] else r + 1)
            return f"decoder.upsamples.{index}." + (_residual(m[3]) if m[2] else m[3])
    raise KeyError(key)


def model_of(config) -> tuple[type, dict]:
    """Our model class and its constructor arguments for a diffusers ``AutoencoderKLWan`` config (a mapping);
    ValueError naming the field for a configuration neither Wan model has."""
    nested = bool(config.get("is_residual", False))
    expected = {"in_channels": 12 if nested else 3, "out_channels": 12 if nested else 3,
                "patch_size": 2 if nested else None}
    for field, value in expected.items():
        if config.get(field, value) != value:
            raise ValueError(f"config: {field}={config.get(field)!r} is not the Wan{'2.2' if nested else '2.1'} "
                             f"VAE's (is_residual={nested}: {field}={value!r})")
    args = dict(dim=config.get("base_dim", 96), z_dim=config.get("z_dim", 16),
                dim_mult=list(config.get("dim_mult", [1, 2, 4, 4])), num_res_blocks=config.get("num_res_blocks", 2),
                attn_scales=list(config.get("attn_scales", [])),
                temperal_downsample=list(config.get("temperal_downsample", [False, True, True])),
                dropout=config.get("dropout", 0.0))
    if nested:
        return Wan22VAEModel, dict(args, dec_dim=config.get("decoder_base_dim") or args["dim"])
    if config.get("decoder_base_dim") not in (None, args["dim"]):
        raise ValueError(f"config: decoder_base_dim={config['decoder_base_dim']} differs from base_dim={args['dim']}: "
                         f"the Wan2.1 VAE has one width for both")
    return WanVAEModel, args
