"""Out-of-memory back-off: an out-of-memory error inside a chunk runs that chunk again in smaller ones (the same
result, since chunking is only a schedule), with one warning; injected here on CPU by an op that refuses inputs of
more frames than a budget, as a GPU would refuse large chunks."""
import pytest
import torch

from helpers import TINY, tiny_model
from vaekernels import engine, ops
from vaekernels.layers import CausalState
from vaekernels.layers import conv as conv_layer

SCALE = [0.1, 1.3]


@pytest.fixture
def frame_budget(monkeypatch):
    """Makes every causal conv whose input has more than ``budget[0]`` frames at or above ``budget[1]`` pixels per
    frame raise torch.OutOfMemoryError (after allocating nothing), counting the refusals."""
    budget = {"frames": None, "pixels": 0, "refused": 0}
    real = ops.causal_conv3d

    def conv(x, *args, **kwargs):
        if budget["frames"] is not None and x.shape[2] > budget["frames"] and \
                x.shape[3] * x.shape[4] >= budget["pixels"]:
            budget["refused"] += 1
            raise torch.OutOfMemoryError("injected: over the test's frame budget")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(conv_layer.ops, "causal_conv3d", conv)
    return budget


@pytest.mark.parametrize("family", list(TINY))
def test_encode_and_decode_back_off_to_the_same_result(family, frame_budget):
    model = tiny_model(family)
    h, w = TINY[family][2]
    x = torch.rand(1, 3, 17, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, model.z_dim, 5, *model.latent_size(h, w), generator=torch.Generator().manual_seed(2))
    expected = [model.encode(x, SCALE, chunk_frames=1), model.decode(z, SCALE, chunk_frames=1)]
    # the convs at full resolution (after Wan2.2's 2x2 patches) take one frame at most
    frame_budget.update(frames=1, pixels=h * w // model.spec.patch_size ** 2)
    with pytest.warns(RuntimeWarning, match="out of memory in a chunk") as caught:
        got = [model.encode(x, SCALE, chunk_frames=17), model.decode(z, SCALE, chunk_frames=5)]
        streamed = torch.cat(list(model.decode_frames(z, SCALE, chunk_frames=5)), dim=2)
        pieces = model.encode_frames(iter(torch.split(x, [3, 6, 8], dim=2)), SCALE, chunk_frames=17)
    assert frame_budget["refused"] > 0
    assert len([w for w in caught if "out of memory" in str(w.message)]) == 4  # once per call
    # other chunk and piece sizes than the reference's may sum in another order: float32's rounding through the
    # tiny models' ~40 layers stays far below 1e3 float32 steps of the largest value
    for a, b in ((got[0], expected[0]), (pieces, expected[0]), (got[1], expected[1]), (streamed, expected[1])):
        assert (a - b).abs().max().item() <= 1e3 * torch.finfo(torch.float32).eps * b.abs().max().item()


def test_out_of_memory_at_one_frame_is_raised(frame_budget):
    model = tiny_model("wan2.1")
    frame_budget.update(frames=0)
    with pytest.raises(torch.OutOfMemoryError, match="injected"), pytest.warns(RuntimeWarning, match="smaller"):
        model.encode(torch.zeros(1, 3, 5, 24, 40), SCALE)


def test_other_errors_are_not_retried(monkeypatch):
    model = tiny_model("wan2.1")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(conv_layer.ops, "causal_conv3d", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        model.encode(torch.zeros(1, 3, 5, 24, 40), SCALE)
    assert len(calls) == 1


@pytest.fixture
def fail_once(monkeypatch):
    """Makes the ``at``-th causal conv call (counting from 1; None: none) raise torch.OutOfMemoryError once, counting
    every call."""
    plan = {"at": None, "calls": 0}
    real = ops.causal_conv3d

    def conv(*args, **kwargs):
        plan["calls"] += 1
        if plan["calls"] == plan["at"]:
            raise torch.OutOfMemoryError("injected: once")
        return real(*args, **kwargs)

    monkeypatch.setattr(conv_layer.ops, "causal_conv3d", conv)
    return plan


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("stage", ["encode", "decode", "decode_frames"])
def test_out_of_memory_after_finished_chunks_replays_them(family, stage, fail_once):
    """The state a failed chunk started from is rebuilt by running the finished chunks again: the result is the
    same, progress moves forward only (the failed chunk's halves report apart), and a stream hands out no frame
    twice."""
    model = tiny_model(family)
    h, w = TINY[family][2]
    if stage == "encode":
        arg, chunk = torch.rand(1, 3, 17, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1, 4
    else:
        arg, chunk = torch.randn(1, model.z_dim, 5, *model.latent_size(h, w),
                                 generator=torch.Generator().manual_seed(2)), 1

    def run():
        ends = []
        if stage == "decode_frames":
            chunks = model.decode_frames(arg, SCALE, chunk_frames=chunk, progress=lambda e, t: ends.append(e))
            out = torch.cat(list(chunks), dim=2)
        else:
            out = getattr(model, stage)(arg, SCALE, chunk_frames=chunk, progress=lambda e, t: ends.append(e))
        return out, ends

    expected, expected_ends = run()
    fail_once.update(at=fail_once["calls"] * 3 // 2, calls=fail_once["calls"])  # in a chunk mid-clip
    with pytest.warns(RuntimeWarning, match="out of memory in a chunk"):
        got, ends = run()
    assert ends == sorted(set(ends)) and set(expected_ends) <= set(ends)
    assert got.shape == expected.shape
    # the failed chunk ran in halves (other shapes: another order of sums); float32 rounding through the tiny
    # models' ~40 layers stays far below 1e3 float32 steps of the largest value
    assert (got - expected).abs().max().item() <= 1e3 * torch.finfo(torch.float32).eps * expected.abs().max().item()


@pytest.mark.parametrize("keep_start", [False, True])
def test_schedule_replays_the_finished_chunks_or_restores_the_kept_state(keep_start):
    state = CausalState()
    schedule = engine._Schedule([(0, 2), (2, 4), (4, 6)], state, keep_start=keep_start)
    seen = []
    with pytest.warns(RuntimeWarning, match="out of memory"):
        for (start, end), _, replay in schedule:
            seen.append((start, end, replay))
            before = state.get("conv")
            state.put("conv", (start, end))  # as a layer replaces its entry
            if (start, end) == (4, 6):
                try:
                    raise torch.OutOfMemoryError("injected")
                except torch.OutOfMemoryError:
                    schedule.retry()
                    # kept: the entry as the failed chunk found it; else a fresh state, rebuilt by the replays
                    assert state.get("conv") == (before if keep_start else None)
    replays = [(0, 2, True), (2, 4, True)] if not keep_start else []
    assert seen == [(0, 2, False), (2, 4, False), (4, 6, False)] + replays + [(4, 5, False), (5, 6, False)]
