"""Checkpoint loading: ``.pth`` with ``weights_only=True`` (no code runs) or ``.safetensors``.

Each family reads its configuration from tensor shapes (``vaekernels.models.detect``), so the released
checkpoints and smaller test checkpoints load the same way; every key and shape is checked before anything
is copied.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile

import torch


class CheckpointError(ValueError):
    """A checkpoint that can't be used: unreadable, unsafe, or not a state dict of the model asked for."""


# The usual single wrappers around a state dict: training checkpoints keep the weights under one of these keys
WRAPPER_KEYS = ("state_dict", "model", "module")


def file_kind(path: str) -> str:
    """What the file at ``path`` holds, by its first bytes (not its suffix): "torch" (a torch.save zip, or a
    legacy pickle), "safetensors", or a CheckpointError saying what it is not."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a zip (torch.save), or a pickle's PROTO opcode
        return "torch"
    # safetensors: an 8-byte little-endian header length, then that many bytes of JSON (a damaged header is
    # left to safetensors to report)
    if head[8:9] == b"{":
        return "safetensors"
    if size < 9:
        raise CheckpointError(f"vae_pth: {path!r} is {size} bytes long: too short to be a checkpoint")
    raise CheckpointError(f"vae_pth: {path!r} is neither a torch checkpoint nor a safetensors file (it starts "
                          f"with {head[:8]!r})")


def load_state_dict(path) -> dict:
    """The named tensors in the checkpoint file at ``path``, read by content (a safetensors file named .pth
    loads as safetensors), unwrapped as ``unwrap`` does."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"vae_pth: {path!r} is a directory; pass the checkpoint file in it (.pth or "
                              f".safetensors)")
    if not os.path.isfile(path):
        raise CheckpointError(f"vae_pth: no such file: {path!r}")
    kind = file_kind(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would construct arbitrary objects or run code
        raise CheckpointError(f"vae_pth: {path!r} was refused: it is a torch checkpoint holding more than plain "
                              f"tensors (loading it would execute code or build arbitrary objects): {e}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"vae_pth: {path!r} is corrupt or truncated: {e}") from None
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"vae_pth: {path!r} could not be read: {type(e).__name__}: {e}") from None
    return unwrap(sd, repr(path))


def unwrap(sd, source: str = "the state dict") -> dict:
    """``sd`` as a flat dict of named tensors: the weights under a single usual wrapper key (WRAPPER_KEYS) and
    the ``module.`` prefix of DataParallel are taken out, with a warning saying so; anything else that is not
    a flat dict of tensors is a CheckpointError listing its top-level keys."""
    if isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
        nested = [k for k in WRAPPER_KEYS if isinstance(sd.get(k), dict)]
        if len(nested) == 1:
            warnings.warn(f"vae_pth: {source} holds its weights under {nested[0]!r}; loaded them from there",
                          stacklevel=3)
            sd = sd[nested[0]]
    if not isinstance(sd, dict):
        raise CheckpointError(f"vae_pth: {source} is not a state dict of named tensors (it holds a "
                              f"{type(sd).__name__})")
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        keys = sorted(map(str, sd))
        raise CheckpointError(f"vae_pth: {source} is not a flat state dict of named tensors: its top-level keys are "
                              f"{keys[:10]}{' ...' if len(keys) > 10 else ''} (the weights may be nested under one "
                              f"of them: pass that dict)")
    if sd and all(k.startswith("module.") for k in sd):
        warnings.warn(f"vae_pth: every key of {source} starts with 'module.' (a DataParallel model's); loaded "
                      f"them without it", stacklevel=3)
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def check_keys(expected: dict, sd: dict, model: str) -> None:
    """Raise naming every missing, unexpected and misshaped key of ``sd`` against ``expected`` (``model``'s)."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in set(expected) & set(sd) if sd[k].shape != expected[k].shape)
    # an integer or bool tensor would be cast silently by load_state_dict
    not_float = sorted(f"{k}: {sd[k].dtype}" for k in set(expected) & set(sd) if not sd[k].is_floating_point())
    problems = [f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("misshaped keys", misshaped),
                                   ("keys with non-floating tensors", not_float)) if keys]
    if problems:
        raise CheckpointError(f"vae_pth: state dict does not match the {model} VAE: " + "; ".join(problems))
