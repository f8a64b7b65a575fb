"""The model families, one folder each, and a registry of their models.

A registry entry names a model (``"wan2.1"``), its class, its released configuration, and how to read a
configuration from a checkpoint's tensor shapes (``config_of``: None when the state dict is not of this
model). ``detect(state_dict)`` finds the model a checkpoint is of. A new family is a new folder that
registers its models here; the engine, the ops and the backends do not change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .base import VAEModel, VAESpec
from .checkpoint import CheckpointError, check_keys, load_state_dict
from .distributions import DiagonalGaussian
from .losses import ELBOTerms, elbo_terms, kl_per_pixel, reconstruction_loss


@dataclass(frozen=True)
class ModelEntry:
    name: str  # e.g. "wan2.1"
    title: str  # e.g. "Wan2.1", for messages
    model_class: type
    released: dict  # constructor arguments of the released model
    config_of: Callable[[dict], Optional[dict]]  # state dict -> constructor arguments, or None if not this model


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


def get(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def detect(sd: dict) -> tuple[ModelEntry, dict]:
    """The registered model ``sd`` is a checkpoint of, and its configuration; a CheckpointError naming what
    each model expects when it is of none."""
    for entry in MODELS.values():
        config = entry.config_of(sd)
        if config is not None:
            return entry, config
    raise CheckpointError(f"vae_pth: a checkpoint of none of the known VAEs ({', '.join(e.title for e in MODELS.values())}):"
                          f" it has {len(sd)} tensors, e.g. {sorted(sd)[:3]}")


def build(entry: ModelEntry, config: dict, sd: Optional[dict] = None) -> VAEModel:
    """``entry``'s model of ``config``; with ``sd``, every key and shape checked, then its values copied in."""
    model = entry.model_class(**config)
    if sd is not None:
        check_keys(model.state_dict(), sd, entry.title)
        model.load_state_dict(sd)  # copied into the model's own parameters
    return model


from . import wan  # noqa: E402,F401  (registers its models)
from .wan import Wan22VAEModel, WanVAEModel  # noqa: E402

__all__ = ["MODELS", "ModelEntry", "register", "get", "detect", "build", "VAEModel", "VAESpec", "CheckpointError",
           "load_state_dict", "DiagonalGaussian", "ELBOTerms", "elbo_terms", "kl_per_pixel", "reconstruction_loss",
           "WanVAEModel", "Wan22VAEModel"]
