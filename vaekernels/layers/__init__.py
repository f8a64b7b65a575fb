"""Layers: modules that hold parameters and call ops, and the per-call causal state they thread through.

- ``state``: ``CausalState`` and frame helpers;
- ``conv``: ``CausalConv3d`` (with its history buffer), ``RMSNorm``, ``norm_into_conv``;
- ``blocks``: ``ResidualBlock``, ``AttentionBlock``, ``Resample``, shared by the model families.
"""
from .blocks import AttentionBlock, Resample, ResidualBlock
from .conv import CausalConv3d, RMSNorm, norm_into_conv
from .state import CHANNELS_LAST, CausalState, empty_frames, last_frames

__all__ = ["AttentionBlock", "Resample", "ResidualBlock", "CausalConv3d", "RMSNorm", "norm_into_conv",
           "CHANNELS_LAST", "CausalState", "empty_frames", "last_frames"]
