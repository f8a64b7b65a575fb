"""python_ref: a plain, readable PyTorch reference of the Wan2.1 video VAE.

The oracle that vaekernels is tested against; the package itself never imports it.
"""

from .wan_vae import (
    CACHE_T,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    AttentionBlock,
    Cache,
    CausalConv3d,
    Decoder3d,
    Encoder3d,
    Resample,
    ResidualBlock,
    RMS_norm,
    WanVAE,
    WanVAE_,
)

__all__ = [
    "CACHE_T",
    "Cache",
    "CausalConv3d",
    "RMS_norm",
    "ResidualBlock",
    "AttentionBlock",
    "Resample",
    "Encoder3d",
    "Decoder3d",
    "WanVAE_",
    "WanVAE",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
]
