"""Checkpoint loading: ``.pth`` with ``weights_only=True`` (no code runs) or ``.safetensors``.

Each family reads its configuration from tensor shapes (``vaekernels.models.detect``), so the released
checkpoints and smaller test checkpoints load the same way; every key and shape is checked before anything
is copied.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch


class CheckpointError(ValueError):
    """A checkpoint that can't be used: unreadable, unsafe, or not a state dict of the model asked for."""


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


def check_keys(expected: dict, sd: dict, model: str) -> None:
    """Raise naming every missing, unexpected and misshaped key of ``sd`` against ``expected`` (``model``'s)."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in set(expected) & set(sd) if sd[k].shape != expected[k].shape)
    problems = [f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("misshaped keys", misshaped)) if keys]
    if problems:
        raise CheckpointError(f"vae_pth: state dict does not match the {model} VAE: " + "; ".join(problems))
