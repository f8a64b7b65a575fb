"""torch.compile (inductor) of a model's decode and of a training step through it: the ops are opaque custom ops with
fake implementations, so dynamo traces around them (breaking its graph where the schedule is Python) and the
result equals eager mode's."""
import pytest
import torch

from helpers import rel_err, tiny_model

SCALE = [0.0, 1.0]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _latent():
    return torch.randn(1, 4, 3, 3, 5, generator=torch.Generator().manual_seed(0))


def test_compiled_decode_equals_eager(fresh_dynamo):
    model = tiny_model("wan2.1")
    z = _latent()
    with torch.no_grad():
        want = model.decode(z, SCALE, chunk_frames=2)
        got = torch.compile(lambda z: model.decode(z, SCALE, chunk_frames=2))(z)
    # the same kernels; inductor may fuse the plain elementwise ops around them (the latent's un-normalisation): a
    # few float32 roundings of values of order one
    assert rel_err(got, want.double()) <= 1e-6


def test_compiled_training_step_equals_eager(fresh_dynamo):
    model = tiny_model("wan2.1").requires_grad_(True)
    params = [p for name, p in model.named_parameters() if name.startswith(("decoder.", "conv2."))]
    z = _latent()

    def step(z):
        return model.decode(z, SCALE, chunk_frames=2).abs().mean()  # two chunks: checkpointed

    loss = step(z)
    want = torch.autograd.grad(loss, params)
    compiled = torch.compile(step)(z)
    got = torch.autograd.grad(compiled, params)
    # as above: a few float32 roundings of the loss's terms, and of the gradients through them
    assert rel_err(compiled, loss.double()) <= 1e-6
    for g, w in zip(got, want):
        assert rel_err(g, w.double()) <= 1e-5
