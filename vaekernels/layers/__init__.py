"""Layers: modules that hold parameters and call ops, and the per-call causal state they thread through.

- ``state``: ``CausalState`` and frame helpers;
- ``conv``: ``CausalConv3d`` (with its history buffer), ``RMSNorm``, ``norm_into_conv``;
- ``blocks``: ``ResidualBlock``, ``AttentionBlock``, ``Resample``, shared by the model families;
- ``bands``: a frame split over a process group by bordered bands of rows, and the exchanges between them.
"""
from .bands import Bands, PeerError, bordered, bordered_like, interior
from .blocks import AttentionBlock, Resample, ResidualBlock
from .conv import CausalConv3d, RMSNorm, norm_into_conv
from .state import CHANNELS_LAST, CausalState, empty_frames, last_frames

__all__ = ["Bands", "PeerError", "bordered", "bordered_like", "interior", "AttentionBlock", "Resample", "ResidualBlock",
           "CausalConv3d", "RMSNorm", "norm_into_conv", "CHANNELS_LAST", "CausalState", "empty_frames", "last_frames"]
