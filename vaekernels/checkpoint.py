"""Checkpoint loading: ``.pth`` with ``weights_only=True`` (no code runs) or ``.safetensors``.

The configuration is read from tensor shapes, so the released ``Wan2.1_VAE.pth`` and smaller
test checkpoints load the same way; every key and shape is checked before anything is copied.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch

RELEASE_CONFIG = dict(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)


class CheckpointError(ValueError):
    """A checkpoint that can't be used: unreadable, unsafe, or not a Wan2.1 VAE state dict."""


def load_state_dict(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"vae_pth: no such file: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would construct arbitrary objects or run code
        raise CheckpointError(f"vae_pth: {path!r} was refused: it is not a plain tensor checkpoint "
                              f"(loading it would execute code or build arbitrary objects): {e}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"vae_pth: {path!r} is corrupt or truncated: {e}") from None
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"vae_pth: {path!r} could not be read: {type(e).__name__}: {e}") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(f"vae_pth: {path!r} is not a state dict of named tensors")
    return sd


def config_from_state_dict(sd: dict) -> dict:
    """``dim`` and ``z_dim`` from tensor shapes; the rest is the released architecture."""
    missing = [k for k in ("encoder.conv1.weight", "conv2.weight") if k not in sd]
    if missing:
        raise CheckpointError(f"vae_pth: not a Wan2.1 VAE checkpoint: missing {missing} "
                              f"(it has {len(sd)} tensors, e.g. {sorted(sd)[:3]})")
    return dict(dim=int(sd["encoder.conv1.weight"].shape[0]), z_dim=int(sd["conv2.weight"].shape[0]),
                **RELEASE_CONFIG)


def check_keys(expected: dict, sd: dict) -> None:
    """Raise naming every missing, unexpected and misshaped key."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in set(expected) & set(sd) if sd[k].shape != expected[k].shape)
    problems = [f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("misshaped keys", misshaped)) if keys]
    if problems:
        raise CheckpointError("vae_pth: state dict does not match the Wan2.1 VAE: " + "; ".join(problems))
