"""The main job, ``python -m vaekernels demo``, at a tiny size."""
import pytest
import torch
from PIL import Image

from vaekernels.__main__ import main


def _row(out, name):
    return float(out.split(name)[1].split()[0])


def test_demo_prints_table_and_writes_strip(tmp_path, capsys):
    """The table says how far the reconstruction is from the input, and separates the memory the first call left
    held (the fast kernels' prepared weights) from its transient peak; by default the weights are the shipped
    trained model's, and the table says how they were made."""
    main(["demo", "--frames", "5", "--height", "16", "--width", "24", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for row in ("latent max |fast - ref|", "video PSNR fast vs ref", "speed-up", "memory FastWanVAE",
                "transient peak", "held after the first call", "reconstruction PSNR (fast)",
                "weights: trained by examples/train_vae.py"):
        assert row in out
    assert "noise" not in out
    assert _row(out, "video PSNR fast vs ref") > 80  # float32 both: the two agree to rounding
    strip = Image.open(tmp_path / "strip.png")
    assert strip.height == 3 * 16  # input, python_ref, FastWanVAE rows


# The shipped model's reconstruction of the demo's own clip (17x128x128, seed 0): measured RECON_MEASURED dB when
# it was committed; the floor leaves 1 dB for other CPUs' rounding (float32: differences of ~1e-6, far below it)
# and fails if the checkpoint is replaced by a worse one or the demo stops loading it
RECON_MEASURED = 24.1  # dB, Intel Sapphire Rapids, 2026-12-06
RECON_FLOOR = RECON_MEASURED - 1.0


def test_demo_reconstructs_its_clip(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert _row(out, "reconstruction PSNR (fast)") >= RECON_FLOOR
    assert _row(out, "reconstruction PSNR (ref)") >= RECON_FLOOR


def test_demo_random_weights_say_so(tmp_path, capsys):
    main(["demo", "--random", "--frames", "5", "--height", "16", "--width", "24", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "(random weights: noise)" in out and "weights: trained" not in out
    assert "wan2.1 VAE (FastWanVAE), z_dim=16" in out


@pytest.mark.parametrize("extra", [["--random"], ["--model", "wan2.1"]])
def test_demo_weights_with_random_or_model_is_an_error(extra, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--weights", "some.safetensors", *extra])
    assert e.value.code == 2
    assert "--weights reads the model from the checkpoint" in capsys.readouterr().err


def test_demo_with_a_small_checkpoint(tmp_path, capsys):
    """--weights of a checkpoint whose widths and time layout are not the released ones: python_ref is built
    from the checkpoint's configuration too."""
    from safetensors.torch import save_file

    from vaekernels import WanVAEModel

    torch.manual_seed(0)
    made = WanVAEModel(dim=8, z_dim=16, temperal_downsample=[True, True, False])
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in made.state_dict().items()}, str(path))
    main(["demo", "--weights", str(path), "--frames", "5", "--height", "16", "--width", "24", "--out",
          str(tmp_path)])
    out = capsys.readouterr().out
    assert _row(out, "video PSNR fast vs ref") > 80


def test_demo_bad_argument_is_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--frames", "0", "--height", "16", "--width", "16"])
    assert e.value.code == 2
    assert "at least one clip and one frame" in capsys.readouterr().err


def test_demo_of_wan22(tmp_path, capsys):
    main(["demo", "--model", "wan2.2", "--frames", "5", "--height", "32", "--width", "32", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "wan2.2 VAE (Wan2_2_VAE), z_dim=48, 4x16x16 compression" in out
    assert float(out.split("video PSNR fast vs ref")[1].split()[0]) > 80  # float32 both: rounding only
