"""Tests of python_ref, the plain PyTorch references of the Wan2.1 and Wan2.2 VAEs.

Each reference is checked against outputs of the official implementation (tests/data/wan2*_tiny_float64.pt:
small config, random weights, float64) and against the released checkpoint's key list
(tests/data/wan2*_vae_keys.tsv, copied from shared/ so a clone is self-contained).
"""

from pathlib import Path

import pytest
import torch

from helpers import read_keys_tsv
from python_ref import WanVAE, WanVAE_, wan22_vae

DATA = Path(__file__).parent / "data"

# float64 arithmetic throughout, so our result differs from the original's only by the order of
# floating-point operations (measured: ~4e-15); 1e-6 leaves room for that and for nothing else.
RTOL_FLOAT64 = 1e-6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "wan21_tiny_float64.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_model(golden):
    model = WanVAE_(**golden["config"]).double().eval()
    # the weights are stored as float32; the golden outputs were computed from them upcast
    model.load_state_dict({k: v.double() for k, v in golden["state_dict"].items()})
    return model


@pytest.fixture(scope="module")
def scale(golden):
    return [golden["latents_mean"], 1.0 / golden["latents_std"]]


CASE_IDS = ["T1_16x16", "T5_16x16", "T9_24x40", "T13_32x32", "T7_16x24"]


@pytest.mark.parametrize("i", range(len(CASE_IDS)), ids=CASE_IDS)
def test_golden_case(golden, tiny_model, scale, i):
    case = golden["cases"][i]
    with torch.no_grad():
        mu = tiny_model.encode(case["video"], scale)
        _, log_var = tiny_model.encode_raw(case["video"])
        decoded = tiny_model.decode(case["mu"], scale)
        decoded_random = tiny_model.decode(case["z_random"], scale)
    assert rel_err(mu, case["mu"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(log_var, case["log_var"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(decoded, case["decoded"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(decoded_random, case["decoded_random"]) <= RTOL_FLOAT64  # float64; reassociation only


@pytest.mark.parametrize("chunk_frames, chunk_latents", [(None, None), (8, 2)], ids=["whole_clip", "chunks_8_2"])
def test_other_schedules_match_original(golden, tiny_model, scale, chunk_frames, chunk_latents):
    """Chunking is only a schedule (spec, last section): the whole clip in one chunk, or
    longer chunks, give the original's result."""
    for case in golden["cases"]:
        with torch.no_grad():
            mu = tiny_model.encode(case["video"], scale, chunk_frames=chunk_frames)
            decoded = tiny_model.decode(case["z_random"], scale, chunk_latents=chunk_latents)
        assert rel_err(mu, case["mu"]) <= RTOL_FLOAT64  # float64; reassociation only
        assert rel_err(decoded, case["decoded_random"]) <= RTOL_FLOAT64  # float64; reassociation only


def test_encode_rejects_chunks_not_multiple_of_4(tiny_model, scale):
    with pytest.raises(ValueError):
        tiny_model.encode(torch.zeros(1, 3, 9, 16, 16, dtype=torch.float64), scale, chunk_frames=6)


def test_state_dict_matches_released_checkpoint():
    expected, total = read_keys_tsv(DATA / "wan21_vae_keys.tsv")
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same keys, in the checkpoint's order
    assert got == expected
    assert sum(v.numel() for v in model.parameters()) == total


@pytest.fixture(scope="module")
def wrapper():
    torch.manual_seed(0)
    return WanVAE()  # released config, random weights, float32, CPU


def test_wrapper_list_api(wrapper):
    assert not wrapper.model.training
    assert not any(p.requires_grad for p in wrapper.model.parameters())
    assert wrapper.mean.shape == wrapper.std.shape == (16,)
    torch.manual_seed(1)
    videos = [torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 5, 16, 24) * 2 - 1]
    zs = wrapper.encode(videos)
    assert [tuple(z.shape) for z in zs] == [(16, 1, 2, 2), (16, 2, 2, 3)]
    assert all(z.dtype == torch.float32 for z in zs)
    outs = wrapper.decode(zs)
    assert [tuple(o.shape) for o in outs] == [(3, 1, 16, 16), (3, 5, 16, 24)]
    assert all(o.dtype == torch.float32 and o.abs().max() <= 1 for o in outs)


def test_wrapper_decode_clamps(wrapper):
    head = wrapper.model.decoder.head[2]
    saved = head.bias.clone()
    try:
        head.bias.copy_(torch.tensor([10.0, -10.0, 0.0]))  # push two channels out of [-1, 1]
        z = torch.randn(16, 1, 2, 2)
        (out,) = wrapper.decode([z])
        with torch.no_grad():
            raw = wrapper.model.decode(z.unsqueeze(0), wrapper.scale).squeeze(0)
    finally:
        head.bias.copy_(saved)
    assert raw[0].min() > 1 and raw[1].max() < -1
    assert torch.equal(out, raw.clamp(-1, 1))


def test_wrapper_bf16_autocast(wrapper):
    torch.manual_seed(0)
    vae_bf16 = WanVAE(dtype=torch.bfloat16)  # same seed: same random weights as `wrapper`
    video = torch.rand(3, 5, 16, 16) * 2 - 1
    (z32,) = wrapper.encode([video])
    (z16,) = vae_bf16.encode([video])
    assert vae_bf16.mean.dtype == torch.bfloat16
    assert z16.dtype == torch.float32 and z16.shape == z32.shape
    assert not torch.equal(z16, z32)  # autocast really ran in bfloat16 ...
    # ... and computed the same function: bf16 keeps 8 bits of mantissa (measured here: 0.6%)
    assert rel_err(z16, z32) <= 0.05
    (out,) = vae_bf16.decode([z16])
    assert out.dtype == torch.float32 and out.shape == (3, 5, 16, 16)


def test_wrapper_only_z16():
    with pytest.raises(ValueError):
        WanVAE(z_dim=4)


# ---------------------------------------------------------------------------------------------
# Wan2.2
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden22():
    g = torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True)
    model = wan22_vae.WanVAE_(**g["config"]).double().eval()
    model.load_state_dict({k: v.double() for k, v in g["state_dict"].items()})
    return g, model, [g["latents_mean"], 1.0 / g["latents_std"]]


CASE_IDS_22 = ["T1_32x32", "T5_32x32", "T9_32x48", "T13_48x32", "T7_32x32"]


@pytest.mark.parametrize("i", range(len(CASE_IDS_22)), ids=CASE_IDS_22)
@pytest.mark.parametrize("chunk_frames, chunk_latents", [(4, 1), (None, None), (8, 2)],
                         ids=["official", "whole_clip", "chunks_8_2"])
def test_wan22_golden_case(golden22, i, chunk_frames, chunk_latents):
    """The official schedule (encode 1, 4, 4, ...; decode one latent frame at a time) and other schedules whose
    chunks keep the shortcuts' per-chunk padding right (multiples of 4 frames)."""
    g, model, scale = golden22
    case = g["cases"][i]
    with torch.no_grad():
        mu, log_var = model.encode_raw(case["video"], chunk_frames)
        mu = model.encode(case["video"], scale, chunk_frames)
        decoded = model.decode(case["mu"], scale, chunk_latents)
        decoded_random = model.decode(case["z_random"], scale, chunk_latents)
    assert rel_err(mu, case["mu"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(log_var, case["log_var"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(decoded, case["decoded"]) <= RTOL_FLOAT64  # float64; reassociation only
    assert rel_err(decoded_random, case["decoded_random"]) <= RTOL_FLOAT64  # float64; reassociation only


def test_wan22_patchify_round_trip_and_layout():
    """Channel c*4 + r*2 + q holds pixel (2h + q, 2w + r) of channel c (shared/wan22_vae.md)."""
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float64).reshape(2, 3, 2, 4, 6)
    p = wan22_vae.patchify(x)
    assert p.shape == (2, 12, 2, 2, 3)
    for c, r, q, h, w in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 2), (2, 0, 1, 1, 1), (2, 1, 1, 0, 2)]:
        assert p[1, c * 4 + r * 2 + q, 1, h, w] == x[1, c, 1, 2 * h + q, 2 * w + r]
    assert torch.equal(wan22_vae.unpatchify(p), x)


def test_wan22_state_dict_matches_released_checkpoint():
    expected, total = read_keys_tsv(DATA / "wan22_vae_keys.tsv")
    with torch.device("meta"):
        model = wan22_vae.WanVAE_(dim=160, dec_dim=256, z_dim=48, temperal_downsample=[False, True, True])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same keys, in the checkpoint's order
    assert got == expected
    assert sum(v.numel() for v in model.parameters()) == total


def test_wan22_wrapper_list_api():
    torch.manual_seed(0)
    vae = wan22_vae.Wan2_2_VAE(c_dim=8, dim_mult=[1, 2, 4, 4])  # narrow, random weights: the API, not the values
    assert vae.mean.shape == vae.std.shape == (48,)
    zs = vae.encode([torch.rand(3, 5, 32, 48) * 2 - 1])
    assert [tuple(z.shape) for z in zs] == [(48, 2, 2, 3)]
    outs = vae.decode(zs)
    assert [tuple(o.shape) for o in outs] == [(3, 5, 32, 48)] and outs[0].abs().max() <= 1
