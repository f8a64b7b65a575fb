"""Wan22VAEModel (the Wan2.2 VAE) against the golden outputs of the official code, at many chunk lengths, and its
schedule rules (the shortcuts' pending frames and first-chunk trim, the decoder's pieces), input checks and keys."""
import contextlib
from pathlib import Path

import pytest
import torch

import python_ref
from helpers import read_keys_tsv, rel_err, spy_on_joins
from vaekernels import Wan22VAEModel, use_backend

DATA = Path(__file__).parents[1] / "data"
GOLDEN = torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True)
SCALE = [GOLDEN["latents_mean"], 1.0 / GOLDEN["latents_std"]]


@pytest.fixture(scope="module")
def golden_model():
    m = Wan22VAEModel(**GOLDEN["config"]).double().eval().requires_grad_(False)
    m.load_state_dict({k: v.double() for k, v in GOLDEN["state_dict"].items()})
    return m


@pytest.mark.parametrize("chunk_frames", [None, 1, 2, 3])
@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_golden(golden_model, case, chunk_frames):
    """Any chunk length (1, 2, 3 frames, or the whole clip) gives the official result: the shortcuts' pending frames
    and the first chunk's trim are schedule rules."""
    c = GOLDEN["cases"][case]
    video = c["video"]
    # T=7 is not 1+4k: as the official code, trailing frames are dropped, with a warning
    dropped = pytest.warns(UserWarning, match="not 1\\+4k") if video.shape[2] % 4 != 1 else contextlib.nullcontext()
    with use_backend("torch"):
        with dropped:
            mu, log_var = golden_model.encode_raw(video, chunk_frames=chunk_frames)
        decoded = golden_model.decode(c["mu"], SCALE, chunk_frames=chunk_frames)
        decoded_random = golden_model.decode(c["z_random"], SCALE, chunk_frames=chunk_frames)
    mu = (mu - SCALE[0].view(1, -1, 1, 1, 1)) * SCALE[1].view(1, -1, 1, 1, 1)
    # float64 throughout: differences are summation order only (~1e-15); 1e-6 is the bar
    assert rel_err(mu, c["mu"]) <= 1e-6
    assert rel_err(log_var, c["log_var"]) <= 1e-6
    assert rel_err(decoded, c["decoded"]) <= 1e-6
    assert rel_err(decoded_random, c["decoded_random"]) <= 1e-6


@pytest.mark.parametrize("chunk_frames", [None, 1])
def test_golden_decode_in_pieces(golden_model, chunk_frames, monkeypatch):
    """Under a tiny budget the decoder runs its output-resolution layers (from the last stage's resample and its
    shortcut on) one frame at a time."""
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "1e-6")
    head = golden_model.decoder.head[2]
    calls = []
    monkeypatch.setattr(head, "forward", lambda *a, **k: calls.append(1) or type(head).forward(head, *a, **k))
    for c in GOLDEN["cases"]:
        calls.clear()
        with use_backend("torch"):
            decoded = golden_model.decode(c["z_random"], SCALE, chunk_frames=chunk_frames)
        assert len(calls) == decoded.shape[2]  # one piece per output frame
        assert rel_err(decoded, c["decoded_random"]) <= 1e-6  # float64: summation order only, as above


def test_pieces_after_a_time_upsampler(monkeypatch):
    """With a time upsampler in the last resampling stage, each piece doubles its frames, and its shortcut drops
    the clip's first frame on the first piece only."""
    torch.manual_seed(0)
    cfg = dict(dim=4, dec_dim=4, z_dim=4, temperal_downsample=[True, True, False])
    m = Wan22VAEModel(**cfg).double().eval().requires_grad_(False)
    ref = python_ref.wan22_vae.WanVAE_(**cfg).double().eval()
    ref.load_state_dict(m.state_dict())
    z = torch.randn(1, 4, 3, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.decode(z, [0.0, 1.0])
    with use_backend("torch"):
        whole = m.decode(z, [0.0, 1.0])
        monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "1e-6")
        pieces = m.decode(z, [0.0, 1.0], chunk_frames=1)
    assert whole.shape == pieces.shape == expected.shape == (1, 3, 9, 32, 48)
    assert rel_err(whole, expected) <= 1e-12 and rel_err(pieces, expected) <= 1e-12  # float64: summation order


def test_no_cat_or_pad_of_activations(monkeypatch):
    """The model path never joins cache and chunk (or a shortcut's pending frames and chunk) with torch.cat, nor
    pads a whole activation."""
    torch.manual_seed(0)
    m = Wan22VAEModel(**GOLDEN["config"]).eval().requires_grad_(False)
    x = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    calls = spy_on_joins(monkeypatch)
    with use_backend("torch"):
        z = m.encode(x, [0.0, 1.0], chunk_frames=3)
        m.decode(z, [0.0, 1.0], chunk_frames=1)
    assert calls == []


def test_posterior_and_sample(golden_model):
    x = GOLDEN["cases"][1]["video"]
    with use_backend("torch"):
        post = golden_model.posterior(x)
        mu, log_var = golden_model.encode_raw(x)
        s1 = golden_model.sample(x, SCALE, generator=torch.Generator().manual_seed(7))
        s2 = golden_model.sample(x, SCALE, generator=torch.Generator().manual_seed(7))
        det = golden_model.sample(x, SCALE, deterministic=True)
    assert torch.equal(post.mean, mu) and torch.equal(post.logvar, log_var.clamp(-30, 20))
    assert torch.equal(s1, s2)  # same generator seed, same draw
    torch.testing.assert_close(det, GOLDEN["cases"][1]["mu"], rtol=0, atol=1e-12)  # float64 both
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = (mu + post.std * eps - SCALE[0].view(1, -1, 1, 1, 1)) * SCALE[1].view(1, -1, 1, 1, 1)
    torch.testing.assert_close(s1, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 5, 33, 32), "must be even"),
    ((1, 3, 5, 32, 31), "must be even"),
    ((1, 3, 5, 40, 32), "positive multiples of 16"),  # the official code fails inside AvgDown3D on these
    ((1, 3, 5, 32, 8), "positive multiples of 16"),
    ((1, 12, 5, 32, 32), r"\[N, 3, T, H, W\] video"),
    ((1, 3, 0, 32, 32), "at least one clip and one frame"),
])
def test_bad_videos(golden_model, shape, match):
    with pytest.raises(ValueError, match=match):
        golden_model.encode(torch.zeros(shape, dtype=torch.float64), SCALE)


def test_bad_latents(golden_model):
    with pytest.raises(ValueError, match=r"\[N, 6, T, h, w\] latent"):
        golden_model.decode(torch.zeros(1, 4, 2, 2, 2, dtype=torch.float64), SCALE)
    with pytest.raises(ValueError, match="NaN or Inf"):
        golden_model.decode(torch.full((1, 6, 2, 2, 2), float("nan"), dtype=torch.float64), SCALE)


def test_keys_match_the_released_checkpoint():
    expected, total = read_keys_tsv(DATA / "wan22_vae_keys.tsv")
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = Wan22VAEModel(dim=160, dec_dim=256, z_dim=48, temperal_downsample=[False, True, True])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(v.numel() for v in model.parameters()) == total
