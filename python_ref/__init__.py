"""python_ref: a plain, readable PyTorch reference of the Wan2.1 video VAE.

The oracle that vaekernels is tested against; the package itself never imports it.
"""

from .wan_vae import *  # noqa: F401,F403  (the public names are wan_vae.__all__)
from .wan_vae import __all__  # noqa: F401
