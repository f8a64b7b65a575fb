"""The Wan family: the Wan2.1 VAE (also Wan2.2 14B's and SkyReels-V2's) and the Wan2.2 VAE (TI2V-5B)."""
from .. import ModelEntry, register
from .config import WAN21_RELEASED, WAN22_RELEASED, wan21_config, wan22_config
from .wan21 import WanVAEModel
from .wan22 import Wan22VAEModel

WAN21 = register(ModelEntry("wan2.1", "Wan2.1", WanVAEModel, WAN21_RELEASED, wan21_config))
WAN22 = register(ModelEntry("wan2.2", "Wan2.2", Wan22VAEModel, WAN22_RELEASED, wan22_config))

__all__ = ["WanVAEModel", "Wan22VAEModel", "WAN21", "WAN22"]
