"""The losses of a VAE: the terms of the negative ELBO, per pixel.

``VAEModel.elbo`` computes them through the model; the functions here only read tensors, so that a training loop
with its own encode / decode calls (a decoder fine-tune on a frozen encoder, a distillation) can use them too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .distributions import DiagonalGaussian

DISTANCES = ("l1", "mse")


def reconstruction_loss(video: torch.Tensor, target: torch.Tensor, distance: str = "l1",
                        per_pixel: bool = False) -> torch.Tensor:
    """``|video - target|`` (``"l1"``) or its square (``"mse"``): its mean over every element, or with
    ``per_pixel`` the map itself (the shape of ``video``: for the caller's own weights)."""
    _check_distance(distance)
    if video.shape != target.shape:
        raise ValueError(f"video and target must have one shape, got {tuple(video.shape)} and {tuple(target.shape)}")
    diff = video - target.to(video.dtype)
    error = diff.abs() if distance == "l1" else diff.square()
    return error if per_pixel else error.mean()


def kl_per_pixel(posterior: DiagonalGaussian, pixels: int) -> torch.Tensor:
    """The posterior's KL divergence to N(0, I) (summed over a clip's latent), averaged over the batch and divided by
    ``pixels``, a clip's number of video elements: nats per video element, the scale of ``reconstruction_loss``'s
    mean, so that ``beta`` weighs like against like."""
    return posterior.kl().mean() / pixels


@dataclass
class ELBOTerms:
    """``loss = reconstruction.mean() + beta * kl``, the negative ELBO per video element (up to the likelihood's
    constant and scale), with its terms: ``reconstruction`` (a scalar, or the per-pixel map when asked), ``kl``
    (``kl_per_pixel``), the decoded ``video`` and the ``posterior``."""
    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    video: torch.Tensor
    posterior: DiagonalGaussian
    beta: float


def elbo_terms(video: torch.Tensor, target: torch.Tensor, posterior: DiagonalGaussian, beta: float = 1.0,
               distance: str = "l1", per_pixel: bool = False) -> ELBOTerms:
    """The ``ELBOTerms`` of ``video``, decoded from a draw of ``posterior``, against the clip ``target`` it
    encodes (``video`` may have fewer frames: a clip whose length is not 1 + 4k loses its last ones)."""
    check_terms(beta, distance)
    target = target[:, :, :video.shape[2]]
    rec = reconstruction_loss(video, target, distance, per_pixel)
    kl = kl_per_pixel(posterior, target[0].numel())
    return ELBOTerms(rec.mean() + beta * kl, rec, kl, video, posterior, float(beta))


def check_terms(beta: float, distance: str) -> None:
    """Raise for a ``beta`` or ``distance`` that ``elbo_terms`` cannot take (before any work is done)."""
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    _check_distance(distance)


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def check_generator(generator: Optional[torch.Generator], like: torch.Tensor) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != like.device.type:
        raise ValueError(f"generator is on {generator.device}, the model on {like.device}: draws need a generator "
                         f"on the model's device")
