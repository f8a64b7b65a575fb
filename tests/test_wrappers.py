"""The drop-in wrappers (FastWanVAE = WanVAE = Wan2_1_VAE, Wan2_2_VAE) and load_vae: the official list API,
checkpoint loading, and clear errors for bad input."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import python_ref
import vaekernels
from vaekernels import CheckpointError, FastWanVAE, Wan2_2_VAE, load_vae, use_backend

DATA = Path(__file__).parent / "data"
GOLDEN = torch.load(DATA / "wan21_tiny_float64.pt", weights_only=True)
STATS = dict(latents_mean=GOLDEN["latents_mean"].tolist(), latents_std=GOLDEN["latents_std"].tolist())
GOLDEN22 = torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True)
STATS22 = dict(latents_mean=GOLDEN22["latents_mean"].tolist(), latents_std=GOLDEN22["latents_std"].tolist())


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(GOLDEN["state_dict"], path)
    return path


@pytest.fixture(scope="module")
def vae(tiny_pth):
    return FastWanVAE(z_dim=4, vae_pth=str(tiny_pth), device="cpu", **STATS)


def test_list_api_matches_golden(vae):
    case = GOLDEN["cases"][2]
    with use_backend("torch"):
        [z] = vae.encode([case["video"][0].float()])
        [video] = vae.decode([case["z_random"][0].float()])
    assert z.dtype == torch.float32 and z.shape == case["mu"][0].shape
    assert video.dtype == torch.float32 and video.shape == case["decoded_random"][0].shape
    # float32 weights and activations against a float64 run of the original: float32 rounding
    # through ~40 layers; the clamp to [-1, 1] is the wrapper's, as upstream
    torch.testing.assert_close(z, case["mu"][0].float(), rtol=0, atol=2e-4 * case["mu"].abs().max().item())
    torch.testing.assert_close(video, case["decoded_random"][0].float().clamp(-1, 1), rtol=0, atol=2e-4)
    assert vae.scale[0].shape == (4,) and torch.allclose(vae.scale[1], 1 / GOLDEN["latents_std"].float())


def test_same_results_as_python_ref_wrapper():
    torch.manual_seed(0)
    fast = FastWanVAE(vae_pth=None, device="cpu")
    ref = python_ref.WanVAE(vae_pth=None, device="cpu")
    ref.model.load_state_dict(fast.model.state_dict())
    video = torch.rand(3, 5, 16, 16) * 2 - 1
    [z_fast], [z_ref] = fast.encode([video]), ref.encode([video])
    [v_fast], [v_ref] = fast.decode([z_ref]), ref.decode([z_ref])
    # float32 both; the full-size model's deeper stack accumulates a few 1e-5 of rounding
    torch.testing.assert_close(z_fast, z_ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-3, atol=1e-4)


def test_safetensors_loads(tmp_path, vae):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in GOLDEN["state_dict"].items()}, str(path))
    other = FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)
    for k, v in vae.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v), k


def test_checkpoint_key_errors_name_the_keys(tmp_path):
    sd = dict(GOLDEN["state_dict"])
    sd.pop("decoder.head.2.bias")
    sd["decoder.extra.weight"] = torch.zeros(2)
    sd["conv1.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)
    msg = str(e.value)
    assert "decoder.head.2.bias" in msg and "decoder.extra.weight" in msg and "conv1.bias: (3,)" in msg


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a Wan2.1 VAE checkpoint"):
        FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)


def test_checkpoint_z_dim_mismatch(tiny_pth):
    with pytest.raises(CheckpointError, match="z_dim=4 but z_dim=16"):
        FastWanVAE(z_dim=16, vae_pth=str(tiny_pth), device="cpu")


def test_corrupt_and_truncated_checkpoints(tmp_path, tiny_pth):
    data = Path(tiny_pth).read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    for path in (truncated, garbage, bad_st):
        with pytest.raises(CheckpointError, match="corrupt|could not be read|refused|neither a torch checkpoint"):
            FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)
    with pytest.raises(CheckpointError, match="no such file"):
        FastWanVAE(z_dim=4, vae_pth=str(tmp_path / "missing.pth"), device="cpu", **STATS)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (Path.touch, (Path(self.marker),))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the file really carries code: unsafe loading runs it
    assert marker.exists()


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3, 5, 16), r"videos\[0\] must be a \[3, T, H, W\]"),
    (torch.zeros(4, 5, 16, 16), r"videos\[0\] must be a \[3, T, H, W\]"),
    (torch.zeros(3, 0, 16, 16), "at least one clip and one frame"),
    (torch.zeros(3, 5, 4, 16), "H and W must be at least 8"),
    (torch.zeros(3, 5, 16, 16, dtype=torch.int64), "floating-point"),
    (torch.full((3, 5, 16, 16), float("nan")), "NaN or Inf"),
    (torch.full((3, 5, 16, 16), float("inf")), "NaN or Inf"),
])
def test_bad_videos(vae, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        vae.encode([bad])


def test_bad_latents_and_containers(vae):
    with pytest.raises(ValueError, match=r"zs\[0\] must be a \[4, T, H, W\]"):
        vae.decode([torch.zeros(16, 2, 2, 2)])
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.decode([torch.full((4, 2, 2, 2), float("nan"))])
    with pytest.raises(TypeError, match="videos must be a list"):
        vae.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(TypeError, match="dtype must be one of"):
        FastWanVAE(vae_pth=None, dtype=torch.int8, device="cpu")
    with pytest.raises(ValueError, match="only z_dim=16 has released latent statistics"):
        FastWanVAE(z_dim=4, vae_pth=None, device="cpu")
    with pytest.raises(ValueError, match="pass both or neither"):
        FastWanVAE(z_dim=4, vae_pth=None, device="cpu", latents_mean=STATS["latents_mean"])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            FastWanVAE(vae_pth=None, device="cuda")


def test_odd_sizes_warn_and_floor_like_upstream(vae):
    video = torch.rand(3, 7, 20, 27) * 2 - 1
    with use_backend("torch"), pytest.warns(UserWarning) as record:
        [z] = vae.encode([video])
    messages = " ".join(str(w.message) for w in record)
    assert "not multiples of 8" in messages and "not 1+4k" in messages
    assert z.shape == (4, 2, 2, 3)  # T'=1+(7-1)//4, floor(20/8), floor(27/8)


def test_official_names():
    assert vaekernels.WanVAE is vaekernels.Wan2_1_VAE is FastWanVAE


# ---------------------------------------------------------------------------------------------
# Wan2_2_VAE and load_vae
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny22_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt22") / "tiny22.pth"
    torch.save(GOLDEN22["state_dict"], path)
    return path


@pytest.fixture(scope="module")
def vae22(tiny22_pth):
    return Wan2_2_VAE(z_dim=6, vae_pth=str(tiny22_pth), device="cpu", **STATS22)


def test_wan22_list_api_matches_golden(vae22):
    case = GOLDEN22["cases"][2]
    with use_backend("torch"):
        [z] = vae22.encode([case["video"][0].float()])
        [video] = vae22.decode([case["z_random"][0].float()])
    assert vae22.model.dec_dim == 12 and vae22.model.dim == 8  # read from the checkpoint's shapes
    assert z.dtype == torch.float32 and z.shape == case["mu"][0].shape
    assert video.dtype == torch.float32 and video.shape == case["decoded_random"][0].shape
    # float32 weights and activations against a float64 run of the official code: float32 rounding through ~60
    # layers; the clamp to [-1, 1] is the wrapper's, as the official one's
    torch.testing.assert_close(z, case["mu"][0].float(), rtol=0, atol=2e-4 * case["mu"].abs().max().item())
    torch.testing.assert_close(video, case["decoded_random"][0].float().clamp(-1, 1), rtol=0, atol=2e-4)


def test_wan22_released_statistics_and_random_weights():
    torch.manual_seed(0)
    vae = Wan2_2_VAE(c_dim=8, vae_pth=None, device="cpu")  # z_dim=48: the released statistics
    assert vae.scale[0].shape == (48,)
    assert torch.equal(vae.scale[0], torch.tensor(python_ref.wan22_vae.WAN22_LATENTS_MEAN))
    torch.testing.assert_close(vae.scale[1], 1.0 / torch.tensor(python_ref.wan22_vae.WAN22_LATENTS_STD))
    assert vae.model.dim == 8 and vae.model.dec_dim == 256  # the official: the decoder's width is not c_dim


def test_wan22_safetensors_and_load_vae(tmp_path, tiny22_pth, vae22, tiny_pth):
    path = tmp_path / "tiny22.safetensors"
    save_file({k: v.contiguous() for k, v in GOLDEN22["state_dict"].items()}, str(path))
    for other in (Wan2_2_VAE(z_dim=6, vae_pth=str(path), device="cpu", **STATS22),
                  load_vae(path, device="cpu", **STATS22), load_vae(tiny22_pth, device="cpu", **STATS22)):
        assert type(other) is Wan2_2_VAE
        for k, v in vae22.model.state_dict().items():
            assert torch.equal(other.model.state_dict()[k], v), k
    assert type(load_vae(tiny_pth, device="cpu", **STATS)) is FastWanVAE


def test_checkpoints_of_the_other_family_or_neither(tmp_path, tiny_pth, tiny22_pth):
    with pytest.raises(CheckpointError, match="not a Wan2.2 VAE checkpoint"):
        Wan2_2_VAE(z_dim=4, vae_pth=str(tiny_pth), device="cpu", **STATS)
    with pytest.raises(CheckpointError, match="not a Wan2.1 VAE checkpoint"):
        FastWanVAE(z_dim=6, vae_pth=str(tiny22_pth), device="cpu", **STATS22)
    with pytest.raises(CheckpointError, match="z_dim=6 but z_dim=48"):
        Wan2_2_VAE(vae_pth=str(tiny22_pth), device="cpu")
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="none of the known VAEs .Wan2.1, Wan2.2."):
        load_vae(path, device="cpu")


def test_wan22_key_errors_name_the_keys(tmp_path):
    sd = dict(GOLDEN22["state_dict"])
    sd.pop("decoder.upsamples.0.upsamples.3.resample.1.bias")
    path = tmp_path / "bad22.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="does not match the Wan2.2 VAE.*upsamples.3.resample.1.bias"):
        Wan2_2_VAE(z_dim=6, vae_pth=str(path), device="cpu", **STATS22)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3, 5, 32), r"videos\[0\] must be a \[3, T, H, W\]"),
    (torch.zeros(4, 5, 32, 32), r"videos\[0\] must be a \[3, T, H, W\]"),
    (torch.zeros(3, 0, 32, 32), "at least one clip and one frame"),
    (torch.zeros(3, 5, 31, 32), "must be even"),
    (torch.zeros(3, 5, 8, 32), "positive multiples of 16"),
    (torch.zeros(3, 5, 32, 32, dtype=torch.int64), "floating-point"),
    (torch.full((3, 5, 32, 32), float("nan")), "NaN or Inf"),
])
def test_wan22_bad_videos(vae22, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        vae22.encode([bad])


def test_wan22_bad_latents_and_arguments(vae22):
    with pytest.raises(ValueError, match=r"zs\[0\] must be a \[6, T, H, W\]"):
        vae22.decode([torch.zeros(48, 2, 2, 2)])
    with pytest.raises(TypeError, match="zs must be a list"):
        vae22.decode(torch.zeros(6, 2, 2, 2))
    with pytest.raises(ValueError, match="only z_dim=48 has released latent statistics"):
        Wan2_2_VAE(z_dim=6, c_dim=8, vae_pth=None, device="cpu")
    with pytest.raises(TypeError, match="dtype must be one of"):
        Wan2_2_VAE(c_dim=8, vae_pth=None, dtype=torch.int8, device="cpu")


def test_wan22_frames_not_1_plus_4k_warn(vae22):
    with use_backend("torch"), pytest.warns(UserWarning, match="not 1\\+4k"):
        [z] = vae22.encode([torch.rand(3, 7, 32, 48) * 2 - 1])
    assert z.shape == (6, 2, 2, 3)  # T'=1+(7-1)//4


def test_progress_bar_follows_the_engine():
    from vaekernels.wrappers.base import Progress
    progress = Progress("decode 1/1")
    for done in (2, 5, 9):
        progress(done, 9)
    assert progress.bar.n == 9 and progress.bar.total == 9 and progress.bar.disable  # closed at the end


def test_wan21_checkpoint_with_upstreams_default_time_layout(tmp_path):
    """Upstream WanVAE_'s constructor default downsamples time in the first two stages ([True, True, False], the
    released model in the last two): a checkpoint says which by its time convs, and loads as it was made."""
    from vaekernels import WanVAEModel
    from vaekernels.models import detect

    torch.manual_seed(0)
    made = WanVAEModel(dim=8, z_dim=4, temperal_downsample=[True, True, False])
    path = tmp_path / "early.safetensors"
    save_file({k: v.contiguous() for k, v in made.state_dict().items()}, str(path))
    _, config = detect(made.state_dict())
    assert config["temperal_downsample"] == [True, True, False]
    vae = FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)
    assert all(torch.equal(v, made.state_dict()[k]) for k, v in vae.model.state_dict().items())
