"""vaekernels: fused kernels for the Wan2.1 video VAE, as an exact drop-in."""
from . import ops
from .backends import BackendUnavailable, use_backend
from .distributions import DiagonalGaussian
from .checkpoint import CheckpointError
from .model import WanVAEModel
from .wrapper import FastWanVAE

__all__ = ["ops", "use_backend", "BackendUnavailable", "CheckpointError", "DiagonalGaussian", "FastWanVAE",
           "WanVAEModel"]
__version__ = "0.1.0"
