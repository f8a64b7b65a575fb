"""The command line's file commands on small checkpoints (the tiny golden models' weights): outputs, metadata,
metrics, and bad files or interrupts that must give a clear error and leave no output behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vaekernels import load_vae
from vaekernels import video as video_io
from vaekernels.__main__ import main

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for name in ("wan21", "wan22"):
        sd = torch.load(DATA / f"{name}_tiny_float64.pt", weights_only=True)["state_dict"]
        save_file({k: v.float().contiguous() for k, v in sd.items()}, str(root / f"{name}.safetensors"))
    _write_video(root / "clip.mp4", frames=11, height=40, width=72)
    return root


def _write_video(path, frames, height, width):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        c.start_encoding()  # the header, even for no frames
        for i in range(frames):
            a = np.zeros((height, width, 3), np.uint8)
            a[..., 0] = (np.arange(width) * 3 + 10 * i) % 256
            a[..., 1] = (np.arange(height)[:, None] * 5) % 256
            a[8:20, 4 * i:4 * i + 12, 2] = 255
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        c.mux(s.encode())


def _run(*argv):
    try:
        main([str(a) for a in argv] + ["--device", "cpu"])
    except SystemExit as e:
        return e.code
    return 0


def test_roundtrip_reports_the_decoders_metrics(files, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert _run("roundtrip", files / "clip.mp4", out, "--weights", files / "wan21.safetensors", "--per-frame") == 0
    printed = capsys.readouterr()
    frames, fps = video_io.read_video(out)
    assert frames.shape == (9, 40, 72, 3) and round(fps) == 12  # 11 frames -> 1 + 4k = 9; 40x72 fits 8
    assert (tmp_path / "out.png").stat().st_size > 0 and "11 frames -> 9" in printed.err
    # the printed numbers are those of the decoder's output itself (before the lossy video codec)
    original, _ = video_io.read_video(files / "clip.mp4", 9)
    vae = load_vae(files / "wan21.safetensors", device="cpu", latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    clip = video_io.to_clip(original)
    decoded = vae.decode(vae.encode([clip]))[0]
    mse = video_io.mse_frames(decoded, clip)
    line = next(ln for ln in printed.out.splitlines() if ln.startswith(str(files / "clip.mp4")))
    assert f"PSNR {video_io.psnr_db(sum(mse) / 9):.2f} dB" in line
    assert f"SSIM {sum(video_io.ssim_frames(decoded, clip)) / 9:.4f}" in line
    assert len([ln for ln in printed.out.splitlines() if ln.startswith("frame ")]) == 9


def test_encode_writes_the_latent_and_its_metadata_and_decode_reads_them(files, tmp_path):
    latent, out = tmp_path / "z.safetensors", tmp_path / "out.mp4"
    # one chunk of the 9 frames, in the command's stream as in the API call below: the same sums, the same latent
    assert _run("encode", files / "clip.mp4", latent, "--weights", files / "wan22.safetensors",
                "--chunk-frames", "9") == 0
    with safe_open(str(latent), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items() if k != "format"}
        z = f.get_tensor("latent")
    assert meta["family"] == "wan2.2" and meta["frames"] == 9 and meta["size"] == [32, 64]  # cropped to 16s
    (tmp_path / "plain").write_text("")
    assert latent.stat().st_mode == (tmp_path / "plain").stat().st_mode  # an ordinary file's permissions
    vae = load_vae(files / "wan22.safetensors", device="cpu", latents_mean=[0.0] * 6, latents_std=[1.0] * 6,
                   chunk_frames=9)
    original, _ = video_io.read_video(files / "clip.mp4", 9)
    cropped, _ = video_io.fit_frames(original, 16)
    assert torch.equal(z, vae.encode([video_io.to_clip(cropped)])[0])
    assert _run("decode", latent, out, "--weights", files / "wan22.safetensors") == 0
    assert video_io.read_video(out)[0].shape == (9, 32, 64, 3)


def test_size_resizes_and_is_checked(files, tmp_path, capsys):
    latent = tmp_path / "z.safetensors"
    assert _run("encode", files / "clip.mp4", latent, "--weights", files / "wan21.safetensors", "--size", "24x32") == 0
    assert "resized 40x72 -> 24x32" in capsys.readouterr().err
    assert _run("encode", files / "clip.mp4", latent, "--weights", files / "wan21.safetensors", "--size", "20x32") == 2
    assert "multiples of 8" in capsys.readouterr().err


def _bad_inputs(files, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    data = (files / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    _write_video(tmp_path / "empty.mkv", frames=0, height=40, width=72)
    _write_video(tmp_path / "long.mkv", frames=40, height=40, width=72)  # matroska: readable up to the cut
    data = (tmp_path / "long.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[:len(data) // 2])
    other = tmp_path / "z22.safetensors"
    assert _run("encode", files / "clip.mp4", other, "--weights", files / "wan22.safetensors") == 0
    with safe_open(str(other), "pt") as f:
        meta, z = f.metadata(), f.get_tensor("latent")
    save_file({"latent": z}, str(tmp_path / "wrong_meta.safetensors"), metadata={**meta, "frames": "13"})
    save_file({"weight": z}, str(tmp_path / "plain.safetensors"))
    return [("encode", tmp_path / "missing.mp4", "no such file"),
            ("encode", tmp_path / "text.mp4", "cannot be read as a video"),
            ("encode", tmp_path / "cut.mp4", "cannot be read as a video"),
            ("encode", tmp_path / "empty.mkv", "has no frames"),
            ("encode", tmp_path / "cut.mkv", "is cut short: its header says 40 frames"),
            ("decode", other, "a latent of wan2.2, but the weights are wan2.1's"),
            ("decode", tmp_path / "wrong_meta.safetensors", "its metadata"),
            ("decode", tmp_path / "plain.safetensors", "not a latent file")]


def test_bad_files_give_clear_errors_and_no_output(files, tmp_path, capsys):
    for command, source, message in _bad_inputs(files, tmp_path):
        target = tmp_path / ("out.safetensors" if command == "encode" else "out.mp4")
        weights = files / ("wan21.safetensors" if "wrong_meta" not in source.name else "wan22.safetensors")
        assert _run(command, source, target, "--weights", weights) == 2, source
        assert message in capsys.readouterr().err, source
        assert not target.exists() and not list(tmp_path.glob(".*partial*")), source


def test_an_interrupted_decode_leaves_no_output(files, tmp_path, monkeypatch, capsys):
    latent, out = tmp_path / "z.safetensors", tmp_path / "out.mp4"
    assert _run("encode", files / "clip.mp4", latent, "--weights", files / "wan21.safetensors") == 0

    def interrupt(self, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(video_io.VideoWriter, "write", interrupt)
    assert _run("decode", latent, out, "--weights", files / "wan21.safetensors", "--chunk-frames", "1") == 130
    assert "no partial output" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_random_weights_are_said_to_mean_nothing(files, tmp_path, capsys):
    assert _run("roundtrip", files / "clip.mp4", tmp_path / "out.mp4", "--frames", "5", "--size", "16x24",
                "--dtype", "bfloat16") == 0
    printed = capsys.readouterr()
    assert "random weights (Wan2.1, released size)" in printed.err and "these mean nothing" in printed.out


def test_max_memory_picks_the_chunking_or_says_why_not(files, tmp_path, capsys):
    latent, out = tmp_path / "z.safetensors", tmp_path / "out.mp4"
    weights = ("--weights", files / "wan21.safetensors")
    assert _run("encode", files / "clip.mp4", latent, *weights, "--max-memory", "2GiB") == 0
    assert _run("decode", latent, out, *weights, "--max-memory", "2GiB") == 0 and out.stat().st_size > 0
    out.unlink()
    capsys.readouterr()
    for command, source, extra, message in (
            ("decode", latent, ("--max-memory", "1KiB"), "max_memory=1.0 KiB is less than this decode"),
            ("encode", files / "clip.mp4", ("--max-memory", "1KiB"), "is less than this encode"),
            ("decode", latent, ("--max-memory", "plenty"), "max_memory must be a positive number of bytes"),
            ("decode", latent, ("--max-memory", "2GiB", "--chunk-frames", "1"), "chunk_frames or max_memory")):
        target = out if command == "decode" else tmp_path / "z2.safetensors"
        assert _run(command, source, target, *weights, *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not target.exists() and not list(tmp_path.glob(".*partial*")), extra


def test_under_torchrun_the_commands_split_over_the_processes(files, tmp_path):
    """encode and decode under torchrun with 2 processes (gloo): rank 0 writes the latent and the video, and the latent
    is the single process's (float32 rounding apart: the same kernels on bands of rows)."""
    latent, out = tmp_path / "z.safetensors", tmp_path / "out.mp4"
    weights = files / "wan21.safetensors"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "vaekernels"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["encode", files / "clip.mp4", latent], ["decode", latent, out]):
        done = subprocess.run(run + [str(a) for a in argv] + ["--weights", str(weights), "--device", "cpu"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(str(latent), "pt") as f:
        z = f.get_tensor("latent")
    alone = tmp_path / "alone.safetensors"
    assert _run("encode", files / "clip.mp4", alone, "--weights", weights) == 0
    with safe_open(str(alone), "pt") as f:
        want = f.get_tensor("latent")
    # float32 sums of a few hundred products, tiles of the Winograd convs placed elsewhere: far under 1e-5
    assert z.shape == want.shape and (z - want).abs().max() <= 1e-5 * want.abs().max()
    assert video_io.read_video(out)[0].shape == (9, 40, 72, 3)
