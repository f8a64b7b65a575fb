"""WanVAEModel (the Wan2.1 VAE) against the golden outputs of the original and against python_ref, at many chunk
lengths, on every backend."""
import contextlib
import threading
from pathlib import Path

import pytest
import torch

import python_ref
from helpers import rel_err, spy_on_joins
from vaekernels import WanVAEModel, use_backend

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "wan21_tiny_float64.pt", weights_only=True)
SCALE = [GOLDEN["latents_mean"], 1.0 / GOLDEN["latents_std"]]


@pytest.fixture(scope="module")
def golden_model():
    m = WanVAEModel(**GOLDEN["config"]).double().eval().requires_grad_(False)
    m.load_state_dict({k: v.double() for k, v in GOLDEN["state_dict"].items()})
    return m


@pytest.mark.parametrize("chunk_frames", [None, 1, 2, 3, 64])
@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_golden(golden_model, case, chunk_frames):
    c = GOLDEN["cases"][case]
    video = c["video"]
    # T=7 is not 1+4k: as upstream, trailing frames are dropped, with a warning
    dropped = pytest.warns(UserWarning, match="not 1\\+4k") if video.shape[2] % 4 != 1 else contextlib.nullcontext()
    with use_backend("torch"):
        with dropped:
            _, log_var = golden_model.encode_raw(video, chunk_frames=chunk_frames)
        with contextlib.nullcontext() if video.shape[2] % 4 == 1 else pytest.warns(UserWarning):
            mu = golden_model.encode(video, SCALE, chunk_frames=chunk_frames)
        decoded = golden_model.decode(c["mu"], SCALE, chunk_frames=chunk_frames)
        decoded_random = golden_model.decode(c["z_random"], SCALE, chunk_frames=chunk_frames)
    # float64 throughout: differences are summation order only (~1e-15); 1e-6 is the bar
    assert rel_err(mu, c["mu"]) <= 1e-6
    assert rel_err(log_var, c["log_var"]) <= 1e-6
    assert rel_err(decoded, c["decoded"]) <= 1e-6
    assert rel_err(decoded_random, c["decoded_random"]) <= 1e-6


@pytest.mark.parametrize("chunk_frames", [None, 2])
def test_golden_decode_in_pieces(golden_model, chunk_frames, monkeypatch):
    """Under a tiny budget the decoder runs its output-resolution layers one frame at a time."""
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "1e-6")
    head = golden_model.decoder.head[2]
    calls = []
    monkeypatch.setattr(head, "forward", lambda *a, **k: calls.append(1) or type(head).forward(head, *a, **k))
    for c in GOLDEN["cases"]:
        calls.clear()
        with use_backend("torch"):
            decoded = golden_model.decode(c["mu"], SCALE, chunk_frames=chunk_frames)
        assert len(calls) == decoded.shape[2]  # one piece per output frame
        assert rel_err(decoded, c["decoded"]) <= 1e-6  # float64: summation order only, as above


def test_decode_in_pieces_after_a_time_upsampler(monkeypatch):
    """With a time upsampler as the last resampler, each piece doubles its frames on the way to `out`."""
    torch.manual_seed(0)
    m = WanVAEModel(dim=8, z_dim=4, temperal_downsample=[True, True, False]).double().eval().requires_grad_(False)
    z = torch.randn(1, 4, 3, 2, 3, dtype=torch.float64)
    with use_backend("torch"):
        whole = m.decode(z, [0.0, 1.0])
        monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "1e-6")
        pieces = m.decode(z, [0.0, 1.0])
    assert whole.shape == pieces.shape == (1, 3, 9, 16, 24)
    assert rel_err(pieces, whole) <= 1e-12  # float64, the same ops in another schedule: summation order at most
    with pytest.raises(ValueError, match="temperal_downsample must hold exactly two True"):
        WanVAEModel(dim=8, z_dim=4, temperal_downsample=[False, False, True])


def _pair(dim=8, z_dim=4, seed=0):
    """A WanVAEModel and a python_ref WanVAE_ with the same random weights, float32."""
    torch.manual_seed(seed)
    cfg = dict(dim=dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
    fast = WanVAEModel(**cfg).eval().requires_grad_(False)
    # spread the weights so that every layer matters (default init shrinks activations)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = python_ref.WanVAE_(**cfg).eval()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 5, None])
def test_float32_chunking_matches_python_ref(chunk_frames):
    fast, ref = _pair()
    x = torch.rand(1, 3, 13, 24, 40) * 2 - 1
    z = torch.randn(1, 4, 4, 3, 5)
    scale = [0.1, 1.3]
    with torch.no_grad():
        ref_mu = ref.encode(x, scale)
        ref_dec = ref.decode(z, scale)
        ref64 = python_ref.WanVAE_(**dict(dim=8, z_dim=4, temperal_downsample=[False, True, True])).double()
        ref64.load_state_dict(fast.state_dict())
        mu64 = ref64.encode(x.double(), scale)
        dec64 = ref64.decode(z.double(), scale)
    with use_backend("torch"):
        mu = fast.encode(x, scale, chunk_frames=chunk_frames)
        dec = fast.decode(z, scale, chunk_frames=chunk_frames)
    # float32 rounding: our error against float64 may be at most ~2x python_ref's own float32 error
    # (plus a floor of a few float32 ulps of the largest value, for when python_ref happens to be exact)
    floor = 8 * torch.finfo(torch.float32).eps
    assert rel_err(mu, mu64) <= 2 * rel_err(ref_mu, mu64) + floor
    assert rel_err(dec, dec64) <= 2 * rel_err(ref_dec, dec64) + floor


def test_two_threads_share_one_model():
    fast, _ = _pair()
    xs = [torch.rand(1, 3, 9, 16, 16) * 2 - 1 for _ in range(2)]
    with use_backend("torch"):
        expected = [fast.encode_raw(x, chunk_frames=1)[0] for x in xs]
    results = [None, None]

    def work(i):
        with use_backend("torch"):
            for _ in range(3):
                results[i] = fast.encode_raw(xs[i], chunk_frames=1 + i)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        # same weights and input, other chunk length: float32 rounding only
        torch.testing.assert_close(r, e, rtol=1e-4, atol=1e-5)


def test_no_cat_or_pad_of_activations(monkeypatch):
    """The model path never joins cache and chunk with torch.cat, nor pads a whole activation."""
    fast, _ = _pair()
    x = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    calls = spy_on_joins(monkeypatch)
    with use_backend("torch"):
        z = fast.encode(x, [0.0, 1.0], chunk_frames=2)
        fast.decode(z, [0.0, 1.0], chunk_frames=1)
    assert calls == []


def test_posterior_and_sample():
    fast, _ = _pair()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    scale = [torch.full((4,), 0.2), torch.full((4,), 2.0)]
    with use_backend("torch"):
        post = fast.posterior(x)
        mu, log_var = fast.encode_raw(x)
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        s1 = fast.sample(x, scale, generator=g1)
        s2 = fast.sample(x, scale, generator=g2)
        det = fast.sample(x, scale, deterministic=True)
        enc = fast.encode(x, scale)
    assert torch.equal(post.mean, mu) and torch.equal(post.mode(), mu)
    assert torch.equal(post.logvar, log_var.clamp(-30, 20))
    torch.testing.assert_close(post.std, torch.exp(0.5 * post.logvar))
    assert torch.equal(s1, s2)  # same generator seed, same draw
    torch.testing.assert_close(det, enc)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(s1, ((mu + post.std * eps) - 0.2) * 2.0)
    kl = post.kl()
    expected = 0.5 * (mu.pow(2) + post.var - 1 - post.logvar).flatten(1).sum(1)
    assert kl.shape == (1,)
    torch.testing.assert_close(kl, expected)


def test_chunk_budget(monkeypatch):
    from vaekernels.engine import default_chunk_frames

    f32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "1")
    assert default_chunk_frames(2 ** 18, 17, f32) == 4  # 1 MiB holds 4 frames of 256 KiB
    assert default_chunk_frames(2 ** 21, 17, f32) == 1  # never less than one frame
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "16")
    assert default_chunk_frames(2 ** 20, 1000, f32) == 16  # a budget set is not capped
    monkeypatch.setenv("VAEKERNELS_CHUNK_MB", "lots")
    with pytest.raises(ValueError, match="VAEKERNELS_CHUNK_MB"):
        default_chunk_frames(1, 17, f32)
    monkeypatch.delenv("VAEKERNELS_CHUNK_MB")
    assert default_chunk_frames(2 ** 22, 1000, f32) == 4  # the CPU default budget for float32, 16 MiB
    assert default_chunk_frames(2 ** 23, 1000, f32) == 2
    assert default_chunk_frames(2 ** 20, 1000, f32) == 4  # holds 16, but an encode's chunk takes 4 at most there
    assert default_chunk_frames(2 ** 20, 1000, bf16) == 32  # and for other dtypes, 32 MiB
    with pytest.raises(ValueError, match="chunk_frames must be a positive int"):
        _pair()[0].decode(torch.zeros(1, 4, 2, 2, 2), [0.0, 1.0], chunk_frames=0)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_residual_block_drops_conv1_output_before_conv2(backend):
    """A residual block's conv1 output is only conv2's input once normalised into conv2's buffer: it must not be
    alive while conv2 runs (at full resolution it is a whole activation of the chunk, at the memory peak)."""
    import weakref

    from vaekernels.layers import CausalState, ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(8, 8).eval()
    x = torch.randn(1, 8, 3, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    seen = {}
    block.residual[2].register_forward_hook(lambda module, args, out: seen.update(h=weakref.ref(out)))
    block.residual[6].register_forward_pre_hook(lambda module, args: seen.update(alive=seen["h"]() is not None))
    with torch.no_grad(), use_backend(backend):
        block(x, CausalState())
    assert seen["alive"] is False

