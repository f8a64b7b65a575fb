"""A whole encode + decode through the Triton kernels (interpreter on CPU), tiny configuration."""
from pathlib import Path

import pytest
import torch

from vaekernels import FastWanVAE, use_backend

GOLDEN = torch.load(Path(__file__).parent / "data" / "wan21_tiny_float64.pt", weights_only=True)
STATS = dict(latents_mean=GOLDEN["latents_mean"].tolist(), latents_std=GOLDEN["latents_std"].tolist())


def rel_err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(GOLDEN["state_dict"], path)
    return FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)


@pytest.mark.parametrize("case", [1, 2])
def test_fastwanvae_through_triton_matches_golden(vae, case):
    c = GOLDEN["cases"][case]
    video, z = c["video"][0].float(), c["z_random"][0].float()
    with use_backend("triton"):
        [mu] = vae.encode([video])
        [dec] = vae.decode([z])
    with use_backend("torch"):
        [mu_torch] = vae.encode([video])
        [dec_torch] = vae.decode([z])
    truth_dec = c["decoded_random"][0].clamp(-1, 1)
    # float32 kernels (ieee dots) against float64 truth: at most 2x the plain-PyTorch float32 error,
    # plus a floor of a few float32 ulps for when PyTorch's error happens to be tiny
    floor = 8 * torch.finfo(torch.float32).eps
    assert rel_err(mu, c["mu"][0]) <= 2 * rel_err(mu_torch, c["mu"][0]) + floor
    assert rel_err(dec, truth_dec) <= 2 * rel_err(dec_torch, truth_dec) + floor
