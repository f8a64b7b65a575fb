"""The example scripts run and do what they say."""
import importlib.util
import io
import re
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_decoder_lowers_the_loss(tmp_path):
    from safetensors.torch import load_file

    example = _example("train_vae")
    saved = tmp_path / "tuned.safetensors"
    args = example.parse(["--steps", "16", "--clips", "4", "--batch", "2", "--size", "16", "--dim", "8",
                          "--log", "4", "--save", str(saved)])
    printed = io.StringIO()
    losses = example.train(args, out=printed)
    assert len(losses) == 16 and "step    16  loss" in printed.getvalue()
    # a few Adam steps on 4 clips: the mean loss of the last 4 steps is below that of the first 4
    assert sum(losses[-4:]) < sum(losses[:4])
    tuned = load_file(saved)
    fresh = example.initial_model(args).state_dict()  # the example's seeded init
    for key, value in tuned.items():
        # the encoder is frozen; every decoder-side tensor gets a gradient, so Adam moves it
        assert torch.equal(value, fresh[key]) != key.startswith(("decoder.", "conv2.")), key


def test_train_vae_refuses_bad_arguments(capsys):
    example = _example("train_vae")
    for argv, match in [(["--frames", "6"], "1 \\+ 4k"), (["--size", "20"], "multiple of 8"),
                        (["--steps", "0"], "--steps must be at least 1"),
                        (["--size", "64", "--canvas", "32"], "--canvas must be at least --size")]:
        with pytest.raises(SystemExit):
            example.parse(argv)
        assert re.search(match, capsys.readouterr().err), argv


def test_fresh_model_is_an_image_model_run_frame_by_frame():
    """per_frame_init: a still clip (every frame the same) comes out still, every frame as the first (which the
    model sees alone): no tap on an earlier frame, time conv or attention mixes frames at the start."""
    example = _example("train_vae")
    model = example.initial_model(example.parse(["--train", "all", "--dim", "8"])).eval()
    frame = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    scale = [torch.zeros(16), torch.ones(16)]
    with torch.no_grad():
        out = model.decode(model.encode(frame.expand(-1, -1, 9, -1, -1).contiguous(), scale), scale)
    assert out.shape[2] == 9
    # float32: the later frames go through other chunks' code paths, which round in other places
    assert (out - out[:, :, :1]).abs().max() <= 1e-5 * out.abs().max()


def test_a_run_from_another_keeps_its_record(tmp_path):
    """--weights of an earlier run's file: the new file's metadata holds the earlier record ("started_from"), and
    the demo's line names both stages."""
    import json

    from safetensors import safe_open

    from vaekernels.demo import _made_by

    example = _example("train_vae")
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    common = ["--train", "all", "--clips", "2", "--batch", "1", "--size", "16", "--dim", "8", "--log", "2"]
    example.train(example.parse(common + ["--steps", "2", "--frames", "1", "--save", str(first)]), out=io.StringIO())
    example.train(example.parse(common + ["--steps", "4", "--weights", str(first), "--save", str(second)]),
                  out=io.StringIO())
    with safe_open(str(second), "pt") as f:
        made = json.loads(f.metadata()["made_by"])
    assert made["steps_done"] == 4 and made["started_from"]["steps_done"] == 2
    assert "started_from" not in made["started_from"]
    line = _made_by(second)
    assert line.startswith("trained by examples/train_vae.py: 2 steps on 1x16x16")
    assert ", then 4 steps on 5x16x16" in line
