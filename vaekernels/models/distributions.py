"""The diagonal Gaussian posterior that the encoder parameterises (upstream computes and drops it)."""
from __future__ import annotations

from typing import Optional

import torch


class DiagonalGaussian:
    """``N(mean, diag(exp(logvar)))`` with ``logvar`` clamped to [-30, 20] for numerical safety."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean and logvar must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A reparameterised draw ``mean + std * eps``, ``eps ~ N(0, I)``."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, I), summed over every dimension but the batch: shape ``[N]``."""
        terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(1)
