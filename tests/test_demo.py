"""The main job, ``python -m vaekernels demo``, at a tiny size."""
import pytest
from PIL import Image

from vaekernels.__main__ import main


def test_demo_prints_table_and_writes_strip(tmp_path, capsys):
    main(["demo", "--frames", "5", "--height", "16", "--width", "24", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for row in ("latent max |fast - ref|", "video PSNR fast vs ref", "speed-up", "peak memory FastWanVAE"):
        assert row in out
    psnr = float(out.split("video PSNR fast vs ref")[1].split()[0])
    assert psnr > 80  # float32 both: the two agree to rounding
    strip = Image.open(tmp_path / "strip.png")
    assert strip.height == 3 * 16  # input, python_ref, FastWanVAE rows


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
