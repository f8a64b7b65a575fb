"""vaekernels: fused kernels for the Wan2.1 video VAE, as an exact drop-in."""
from . import ops
from .backends import BackendUnavailable, use_backend
from .distributions import DiagonalGaussian
from .model import WanVAEModel

__all__ = ["ops", "use_backend", "BackendUnavailable", "DiagonalGaussian", "WanVAEModel"]
__version__ = "0.1.0"
