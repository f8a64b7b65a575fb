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
