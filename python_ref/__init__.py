"""python_ref: plain, readable PyTorch references: one per model (the oracles vaekernels' model tests compare
against) and one float64 oracle per op (``python_ref.ops``). The package itself never imports them.

- ``wan21_vae``: the Wan2.1 VAE (its names are also this package's top level: ``WanVAE_``, ``WanVAE``, ...);
- ``wan22_vae``: the Wan2.2 VAE (``wan22_vae.WanVAE_``; its wrapper also as ``python_ref.Wan2_2_VAE``);
- ``ops``: the ops' definitions, computed in float64.
"""

from . import ops, wan21_vae, wan22_vae  # noqa: F401
from .wan21_vae import *  # noqa: F401,F403  (the public names are wan21_vae.__all__)
from .wan21_vae import __all__ as _wan21_names
from .wan22_vae import Wan2_2_VAE  # noqa: F401

__all__ = list(_wan21_names) + ["Wan2_2_VAE", "ops", "wan21_vae", "wan22_vae"]
