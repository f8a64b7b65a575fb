"""``load_vae``: open a checkpoint of any known VAE and return the wrapper of the model it holds."""
from __future__ import annotations

import torch

from ..models import detect, load_state_dict
from .wan import FastWanVAE, Wan2_2_VAE

WRAPPERS = {"wan2.1": FastWanVAE, "wan2.2": Wan2_2_VAE}


def load_vae(path, dtype: torch.dtype = torch.float, device="cuda", **kwargs):
    """The wrapper (``FastWanVAE`` or ``Wan2_2_VAE``) of the model the checkpoint at ``path`` (``.pth`` loaded with
    ``weights_only=True``, or ``.safetensors``) holds, found from its tensor shapes; a checkpoint of neither is a
    CheckpointError naming what each expects. ``kwargs``: the wrappers' keyword-only extras."""
    sd = load_state_dict(path)
    entry, config = detect(sd)
    return WRAPPERS[entry.name](z_dim=config["z_dim"], vae_pth=sd, dtype=dtype, device=device, **kwargs)
