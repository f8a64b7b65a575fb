"""The ELBO terms (models/losses.py) and ``VAEModel.elbo``: against torch.distributions and a composition of
python_ref's encode and decode, values and gradients."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import python_ref
from helpers import TINY, rel_err, tiny_model
from vaekernels import DiagonalGaussian, use_backend
from vaekernels.models import kl_per_pixel, reconstruction_loss

REFERENCE = {"wan2.1": python_ref.WanVAE_, "wan2.2": python_ref.wan22_vae.WanVAE_}


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_reconstruction_distances():
    a, b = _randn(2, 3, 5, 4, 6), _randn(2, 3, 5, 4, 6, seed=1)
    assert torch.equal(reconstruction_loss(a, b, "l1", per_pixel=True), (a - b).abs())
    assert torch.equal(reconstruction_loss(a, b, "mse", per_pixel=True), (a - b) ** 2)
    # one mean of the same values: summation order only
    assert rel_err(reconstruction_loss(a, b, "l1"), torch.nn.functional.l1_loss(a, b)) <= 1e-12
    assert rel_err(reconstruction_loss(a, b, "mse"), torch.nn.functional.mse_loss(a, b)) <= 1e-12
    with pytest.raises(ValueError, match="distance must be one of"):
        reconstruction_loss(a, b, "l2")
    with pytest.raises(ValueError, match="one shape"):
        reconstruction_loss(a, b[:, :, :4])


def test_kl_per_pixel_against_torch_distributions():
    mean, logvar = _randn(2, 4, 3, 2, 5), _randn(2, 4, 3, 2, 5, seed=1)
    want = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1).mean() / 1000
    # float64, two closed forms of one divergence: rounding only
    assert rel_err(kl_per_pixel(DiagonalGaussian(mean, logvar), 1000), want) <= 1e-12


@pytest.mark.parametrize("distance", ["l1", "mse"])
@pytest.mark.parametrize("family", ["wan2.1", "wan2.2"])
def test_elbo_equals_python_ref_composition(family, distance):
    """``model.elbo`` with a seeded draw: the loss, its terms and the gradients of every parameter equal those of
    python_ref's encode, the same reparameterised draw and python_ref's decode, in float64."""
    fast = tiny_model(family).double().requires_grad_(True)
    ref = REFERENCE[family](**TINY[family][1]).double()
    ref.load_state_dict(fast.state_dict())
    h, w = TINY[family][2]
    x = torch.rand(1, 3, 5, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    beta = 0.3

    with use_backend("torch"):  # the only backend that runs float64
        terms = fast.elbo(x, beta, distance=distance, generator=torch.Generator().manual_seed(5), chunk_frames=2)
    mean, logvar = ref.encode_raw(x)
    post = DiagonalGaussian(mean, logvar)
    video = ref.decode(post.sample(torch.Generator().manual_seed(5)), [0.0, 1.0])
    diff = video - x
    rec = (diff.abs() if distance == "l1" else diff ** 2).mean()
    kl = kl_divergence(Normal(mean, torch.exp(0.5 * logvar.clamp(-30, 20))), Normal(0.0, 1.0)).sum() / x[0].numel()
    want = rec + beta * kl

    # float64 throughout: summation order only; 1e-6 is the bar for gradients, used for values too
    assert rel_err(terms.reconstruction, rec) <= 1e-6 and rel_err(terms.kl, kl) <= 1e-6
    assert rel_err(terms.loss, want) <= 1e-6
    got = torch.autograd.grad(terms.loss, list(fast.parameters()))
    names = [n for n, _ in fast.named_parameters()]
    expected = dict(zip([n for n, _ in ref.named_parameters()], torch.autograd.grad(want, list(ref.parameters()))))
    for name, g in zip(names, got):
        assert rel_err(g, expected[name]) <= 1e-6, name


def test_elbo_options_and_errors():
    fast = tiny_model("wan2.1").requires_grad_(True)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with use_backend("torch"):
        mean = fast.elbo(x, deterministic=True)
        again = fast.elbo(x, deterministic=True)
        pixels = fast.elbo(x, per_pixel=True, deterministic=True)
        a = fast.elbo(x, generator=torch.Generator().manual_seed(3))
        b = fast.elbo(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mean.loss, again.loss)  # the posterior mean: no randomness
    assert torch.equal(a.loss, b.loss)  # one generator seed, one draw
    assert pixels.reconstruction.shape == x.shape and torch.equal(pixels.loss, mean.loss)
    assert mean.beta == 1.0 and mean.video.shape == x.shape
    for bad, match in [(dict(beta=-1.0), "beta must be a number >= 0"), (dict(beta=True), "beta must be"),
                       (dict(distance="l2"), "distance must be one of"),
                       (dict(generator=0), "generator must be a torch.Generator")]:
        with pytest.raises((ValueError, TypeError), match=match):
            fast.elbo(x, **bad)
