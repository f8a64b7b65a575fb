"""Streaming decode: ``decode_frames`` yields the video chunk by chunk, equal to ``decode``, holding one chunk at a
time, without leaking grad mode or autocast to the caller, checking its input at the call."""
import pytest
import torch

from helpers import TINY, tiny_model
from vaekernels import FastWanVAE, Wan2_2_VAE

SCALE = [0.1, 1.3]
WAN22 = TINY["wan2.2"][1]


def _latent(model, family, frames=5):
    h, w = model.latent_size(*TINY[family][2])
    return torch.randn(1, model.z_dim, frames, h, w, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("chunk_frames", [1, 2, None])
@pytest.mark.parametrize("family", list(TINY))
def test_chunks_concatenate_to_decode(family, chunk_frames):
    model = tiny_model(family)
    z = _latent(model, family)
    whole = model.decode(z, SCALE, chunk_frames=chunk_frames)
    chunks = list(model.decode_frames(z, SCALE, chunk_frames=chunk_frames))
    assert torch.equal(torch.cat(chunks, dim=2), whole)  # the same kernels on the same chunks: bit for bit
    if chunk_frames:
        # the clip's first latent frame gives one frame, every later one four
        sizes = [c.shape[2] for c in chunks]
        assert sizes[0] == 1 + 4 * (chunk_frames - 1) and all(s <= 4 * chunk_frames for s in sizes[1:])
    for c in chunks:  # each chunk its own storage: the whole video is never allocated
        assert c.untyped_storage().nbytes() == c.nbytes


def test_grad_mode_and_autocast_are_the_callers_between_chunks():
    model = tiny_model("wan2.1")
    seen = []
    for _ in model.decode_frames(_latent(model, "wan2.1"), SCALE, chunk_frames=1):
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for c in model.decode_frames(_latent(model, "wan2.1"), SCALE, chunk_frames=1):
            seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
            assert c.dtype == torch.float32  # the model's dtype, as decode under autocast
    assert seen[:5] == [(True, False)] * 5 and seen[5:] == [(True, True)] * 5


def test_input_is_checked_at_the_call():
    model = tiny_model("wan2.1")
    z = _latent(model, "wan2.1")
    z[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.decode_frames(z, SCALE)  # before any iteration
    with pytest.raises(ValueError, match=r"\[4, T, h, w\]"):
        FastWanVAE(vae_pth=None, config=dict(dim=8, z_dim=4), latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                   device="cpu").decode_frames(torch.zeros(3, 2, 3, 5))


def test_an_abandoned_stream_leaves_nothing_behind():
    model = tiny_model("wan2.2")
    z = _latent(model, "wan2.2")
    stream = model.decode_frames(z, SCALE, chunk_frames=1)
    next(stream)
    stream.close()
    assert torch.equal(torch.cat(list(model.decode_frames(z, SCALE, chunk_frames=1)), dim=2),
                       model.decode(z, SCALE, chunk_frames=1))


@pytest.mark.parametrize("family", list(TINY))
def test_wrappers_stream_what_they_decode(family):
    wrapper = {"wan2.1": lambda: FastWanVAE(vae_pth=None, config=dict(dim=8, z_dim=4), latents_mean=[0.0] * 4,
                                            latents_std=[1.0] * 4, device="cpu", chunk_frames=2),
               "wan2.2": lambda: Wan2_2_VAE(vae_pth=None, config=WAN22, z_dim=WAN22["z_dim"],
                                            latents_mean=[0.0] * 6, latents_std=[1.0] * 6, device="cpu",
                                            chunk_frames=2)}[family]()
    z = _latent(wrapper.model, family)[0]
    chunks = list(wrapper.decode_frames(z))
    assert all(c.dtype == torch.float32 and c.dim() == 4 for c in chunks)
    assert torch.equal(torch.cat(chunks, dim=1), wrapper.decode([z])[0])
    assert torch.equal(torch.cat(list(wrapper.decode_frames(z, output_device="cpu")), dim=1), torch.cat(chunks, 1))


@pytest.mark.parametrize("family", list(TINY))
def test_encode_from_pieces_equals_encode(family):
    model = tiny_model(family)
    h, w = TINY[family][2]
    x = torch.rand(1, 3, 15, h, w, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with pytest.warns(UserWarning, match="the last 2 frame"):
        whole = model.encode(x, SCALE, chunk_frames=5)  # 15 frames: 13 = 1 + 4*3 are encoded
    for sizes, chunk in (([1, 3, 4, 5, 2], 5), ([15], 2), ([2, 2, 2, 2, 2, 2, 3], None)):
        pieces = torch.split(x, sizes, dim=2)
        with pytest.warns(UserWarning, match="the last 2 frame"):
            got = model.encode_frames(iter(pieces), SCALE, chunk_frames=chunk)
        # other chunk boundaries may round in another order: float32's rounding through the tiny model's ~40
        # layers stays far below 1e3 float32 steps of the largest value
        tol = 1e3 * torch.finfo(torch.float32).eps * whole.abs().max().item()
        assert (got - whole).abs().max().item() <= tol, sizes


def test_encode_pieces_are_checked_as_they_come():
    model = tiny_model("wan2.1")
    good = torch.zeros(1, 3, 5, 24, 40)
    with pytest.raises(ValueError, match=r"pieces\[1\] must continue the video"):
        model.encode_frames([good, torch.zeros(1, 3, 4, 24, 48)], SCALE)
    bad = good.clone()
    bad[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"pieces\[1\] contains NaN or Inf"):
        model.encode_frames([good, bad], SCALE)
    with pytest.raises(ValueError, match="no frames"):
        model.encode_frames([], SCALE)
    with pytest.raises(TypeError, match=r"pieces\[0\] must be a floating-point tensor"):
        model.encode_frames([torch.zeros(1, 3, 5, 24, 40, dtype=torch.uint8)], SCALE)  # not cast to 0..255 floats
    with pytest.raises(ValueError, match=r"pieces\[1\] must continue the video"):
        model.encode_frames([good, good.double()], SCALE)


def test_output_device_takes_the_video_chunk_by_chunk():
    model = tiny_model("wan2.1")
    z = _latent(model, "wan2.1")
    whole = model.decode(z, SCALE, chunk_frames=1)
    assert torch.equal(model.decode(z, SCALE, chunk_frames=1, output_device="cpu"), whole)  # already there
    # another device: the copy path (meta: shapes only, the one other device a CPU machine has)
    elsewhere = model.decode(z, SCALE, chunk_frames=1, output_device="meta")
    assert elsewhere.device.type == "meta" and elsewhere.shape == whole.shape and elsewhere.dtype == whole.dtype
    chunks = list(model.decode_frames(z, SCALE, chunk_frames=2, output_device="meta"))
    assert [c.device.type for c in chunks] == ["meta"] * 3 and sum(c.shape[2] for c in chunks) == whole.shape[2]
    with pytest.raises(ValueError, match="output_device must be a device such as 'cpu'"):
        model.decode(z, SCALE, output_device="gpu7")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pinned host memory from a CUDA model")
def test_a_cuda_decode_into_pinned_host_memory():
    model = tiny_model("wan2.1").cuda()
    z = _latent(model, "wan2.1").cuda()
    whole = model.decode(z, SCALE, chunk_frames=1)
    host = model.decode(z, SCALE, chunk_frames=1, output_device="cpu")
    assert host.is_pinned() and torch.equal(host, whole.cpu())
    chunks = list(model.decode_frames(z, SCALE, chunk_frames=1, output_device="cpu"))
    assert all(c.is_pinned() for c in chunks) and torch.equal(torch.cat(chunks, dim=2), host)
