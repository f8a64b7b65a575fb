"""vaekernels: fused kernels for video VAEs (Wan2.1, Wan2.2), as exact drop-ins of the official wrappers."""
from . import ops
from .backends import BackendUnavailable, use_backend
from .layers import PeerError
from .models import CheckpointError, DiagonalGaussian, ELBOTerms, Wan22VAEModel, WanVAEModel, elbo_terms
from .wrappers import FastWanVAE, Wan2_1_VAE, Wan2_2_VAE, WanVAE, load_vae

__all__ = ["ops", "use_backend", "BackendUnavailable", "CheckpointError", "DiagonalGaussian", "ELBOTerms", "elbo_terms",
           "FastWanVAE", "PeerError", "WanVAE", "Wan2_1_VAE", "Wan2_2_VAE", "WanVAEModel", "Wan22VAEModel", "load_vae"]
__version__ = "0.2.0"


def __getattr__(name):
    # the diffusers stand-ins import diffusers: only when asked for (and not by `import *`, which works without it)
    if name in ("FastAutoencoderKLWan", "accelerate"):
        from .wrappers import diffusers_wan
        return getattr(diffusers_wan, name)
    raise AttributeError(f"module 'vaekernels' has no attribute {name!r}")
