"""The drop-ins users call: the official Wan wrappers' API, and one loader for any known checkpoint."""
from .loader import load_vae
from .wan import FastWanVAE, Wan2_1_VAE, Wan2_2_VAE, WanVAE

__all__ = ["FastWanVAE", "WanVAE", "Wan2_1_VAE", "Wan2_2_VAE", "load_vae"]
