"""What a careless or hostile user does that must not give a silently wrong result: weights changed in every way
a user changes them (``.data`` writes included), calls that autograd would record, odd checkpoints, odd
arguments; and small random models for trying the package out."""
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import rel_err
from vaekernels import CheckpointError, FastWanVAE, Wan22VAEModel, Wan2_2_VAE, WanVAEModel, load_vae, use_backend
from vaekernels.backends import cpp as cpp_backend
from vaekernels.wrappers import base as wrapper_base

DATA = Path(__file__).parent / "data"
GOLDEN = torch.load(DATA / "wan21_tiny_float64.pt", weights_only=True)
STATS = dict(latents_mean=GOLDEN["latents_mean"].tolist(), latents_std=GOLDEN["latents_std"].tolist())
GOLDEN22 = torch.load(DATA / "wan22_tiny_float64.pt", weights_only=True)
MODELS = {"wan2.1": (WanVAEModel, dict(dim=8, z_dim=4, temperal_downsample=[False, True, True]), (13, 24, 40)),
          "wan2.2": (Wan22VAEModel, GOLDEN22["config"], (9, 32, 32))}
SCALE = [0.1, 1.3]
# the same float32 weights through the same kernels: only a weight whose memory layout changed (a `p.data =`
# assignment) may take another summation order; float32 rounding through ~40 layers stays far below this
SAME_WEIGHTS = 1e3 * torch.finfo(torch.float32).eps


def _model(family, seed=0):
    cls, config, _ = MODELS[family]
    torch.manual_seed(seed)
    return cls(**config).eval().requires_grad_(False)


def _run(model, family):
    _, _, (t, h, w) = MODELS[family]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, t, h, w, generator=gen) * 2 - 1
    z = torch.randn(1, model.z_dim, 1 + (t - 1) // 4, *model.latent_size(h, w), generator=gen)
    return model.encode(x, SCALE), model.decode(z, SCALE)


def _edit_data_mul(model, other):
    for p in model.parameters():
        p.data.mul_(1.5)


def _edit_data_copy(model, other):
    for p, q in zip(model.parameters(), other.parameters()):
        p.data.copy_(q)


def _edit_data_assign(model, other):
    for p in model.parameters():
        p.data = (p.data * 1.5).transpose(0, -1).contiguous().transpose(0, -1)  # a new tensor, in another layout


def _edit_downsampler_data(model, other):
    name = next(n for n, _ in model.named_parameters() if "resample.1.weight" in n)
    model.get_parameter(name).data.mul_(2.0)


def _edit_load_state_dict(model, other):
    model.load_state_dict(other.state_dict())


def _edit_state_dict_values(model, other):
    for v in model.state_dict().values():  # as EMA code does: the state dict's tensors are the parameters
        v.mul_(1.5)


def _edit_in_place_no_grad(model, other):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)


def _edit_data_negate(model, other):
    for p in model.parameters():  # every word's sign bit: plain sums of the words would not change
        p.data.neg_()


def _edit_data_times_two(model, other):
    for p in model.parameters():  # every word's exponent + 1
        p.data.mul_(2)


def _edit_data_swap(model, other):
    for p in model.parameters():  # the same words in another order: plain sums of the words would not change
        p.data.copy_(p.data.roll(1, dims=0))


def _edit_to(model, other):
    model.to(torch.float64)
    for p in model.parameters():
        p.data.mul_(1.5)
    model.to(torch.float32)


EDITS = [_edit_data_mul, _edit_data_copy, _edit_data_assign, _edit_downsampler_data, _edit_load_state_dict,
         _edit_state_dict_values, _edit_in_place_no_grad, _edit_data_negate, _edit_data_times_two, _edit_data_swap,
         _edit_to]


@pytest.mark.parametrize("backend", ["auto", "cpp", "torch"])
@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__[len("_edit_"):])
@pytest.mark.parametrize("family", list(MODELS))
def test_changed_weights_are_used(family, edit, backend):
    """After a call has prepared its weights (packed, Winograd-transformed, padded), changing the weights in any of
    these ways gives the result of a fresh model with the new weights."""
    if backend == "cpp" and cpp_backend._LOAD_ERROR:
        pytest.skip(f"cpp: {cpp_backend._LOAD_ERROR}")
    model, other = _model(family, 0), _model(family, 1)
    with use_backend(backend):
        before = _run(model, family)
        edit(model, other)
        after = _run(model, family)
        fresh = type(model)(**MODELS[family][1]).eval().requires_grad_(False)
        fresh.load_state_dict(model.state_dict())
        expected = _run(fresh, family)
    # the edit must change a result (the encoder's downsampler changes only the latent), or this tests nothing
    assert max(rel_err(b, e.double()) for b, e in zip(before, expected)) > 0.01
    for a, e in zip(after, expected):
        assert rel_err(a, e.double()) <= SAME_WEIGHTS


def test_unchanged_weights_are_not_prepared_again():
    """Changes are found by a fingerprint of each weight's bytes, taken once per weight per call
    (csrc/causal_conv3d.cpp); on unchanged weights a second call must find every prepared weight still valid (the
    downsamplers' padded weights too, which are refilled at every call)."""
    if cpp_backend._LOAD_ERROR:
        pytest.skip(f"cpp: {cpp_backend._LOAD_ERROR}")
    from vaekernels import _C
    for family in MODELS:
        model = _model(family)
        with use_backend("cpp"):
            _run(model, family)
            made = _C.derived_weights_made()
            _run(model, family)
            assert _C.derived_weights_made() == made, family
            next(model.parameters()).data.mul_(2)
            _run(model, family)
            assert _C.derived_weights_made() > made, family


@pytest.mark.parametrize("family", list(MODELS))
def test_state_dict_saves_as_users_do(family, tmp_path):
    """``save_file(model.state_dict())`` after a call (kernels' prepared layouts made) writes a file that a fresh model
    loads back to the same results; the state dict aliases the parameters."""
    model = _model(family)
    before = _run(model, family)
    path = tmp_path / "vae.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = type(model)(**MODELS[family][1]).eval().requires_grad_(False)
    fresh.load_state_dict(load_file(str(path)))
    for a, b in zip(before, _run(fresh, family)):
        assert torch.equal(a, b)  # the same weights through the same kernels, bit for bit
    for name, value in model.state_dict().items():
        assert value.data_ptr() == model.get_parameter(name).data_ptr(), name


def test_streaming_calls_do_not_drop_gradients_silently():
    """encode_frames / decode_frames work chunk by chunk under no_grad: with a graph wanted they raise, naming the
    call that builds one (encode / decode, tests/models/test_gradients.py)."""
    model = _model("wan2.1")
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = torch.randn(1, 4, 2, 2, 2)
    with pytest.raises(RuntimeError, match="z requires grad, but decode_frames builds no autograd graph.*use decode"):
        model.decode_frames(z.clone().requires_grad_(True), SCALE)
    with pytest.raises(RuntimeError, match=r"pieces\[0\] requires grad, but encode_frames .*use encode"):
        model.encode_frames([x.clone().requires_grad_(True)], SCALE)
    trainable = _model("wan2.1").requires_grad_(True)
    with pytest.raises(RuntimeError, match="parameters require grad, but decode_frames"):
        trainable.decode_frames(z, SCALE)
    with pytest.raises(ValueError, match="max_memory plans the memory of inference"):
        trainable.encode(x, SCALE, max_memory="1GiB")
    with torch.no_grad():  # the ways out
        list(trainable.decode_frames(z.requires_grad_(True), SCALE))
        trainable.encode(x, SCALE, max_memory="1GiB")
    with torch.inference_mode():
        list(trainable.decode_frames(z, SCALE))
    list(model.decode_frames(z.detach(), SCALE))
    with pytest.raises(ValueError, match="checkpoint must be True, False or None"):
        trainable.encode(x, SCALE, checkpoint="yes")


def test_non_floating_checkpoint_tensors_are_refused(tmp_path):
    for dtype in (torch.int64, torch.bool):
        sd = {k: v.float().contiguous() for k, v in GOLDEN["state_dict"].items()}
        sd["decoder.head.2.weight"] = sd["decoder.head.2.weight"].to(dtype)
        path = tmp_path / f"{dtype}.safetensors"
        save_file(sd, str(path))
        with pytest.raises(CheckpointError, match=rf"decoder\.head\.2\.weight: {dtype}"):
            FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)


def test_float16_on_cpu_warns_once(monkeypatch):
    monkeypatch.setattr(wrapper_base, "_warned_float16", False)
    with pytest.warns(UserWarning, match="float16 on CPU runs on the plain torch backend"):
        FastWanVAE(z_dim=4, vae_pth=GOLDEN["state_dict"], dtype=torch.float16, device="cpu", **STATS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FastWanVAE(z_dim=4, vae_pth=GOLDEN["state_dict"], dtype=torch.float16, device="cpu", **STATS)


def test_checkpoints_are_read_by_content(tmp_path):
    sd = {k: v.float().contiguous() for k, v in GOLDEN["state_dict"].items()}
    short = tmp_path / "short.pth"
    short.write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="1 bytes long: too short to be a checkpoint"):
        FastWanVAE(z_dim=4, vae_pth=str(short), device="cpu", **STATS)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights, just a text file\n")
    with pytest.raises(CheckpointError, match="neither a torch checkpoint nor a safetensors file"):
        FastWanVAE(z_dim=4, vae_pth=str(text), device="cpu", **STATS)
    misnamed = tmp_path / "safetensors_inside.pth"
    save_file(sd, str(misnamed))
    loaded = FastWanVAE(z_dim=4, vae_pth=str(misnamed), device="cpu", **STATS).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    with pytest.raises(CheckpointError, match="is a directory"):
        FastWanVAE(z_dim=4, vae_pth=str(tmp_path), device="cpu", **STATS)


@pytest.mark.parametrize("wrap, found", [
    (lambda sd: {"state_dict": sd, "epoch": 3}, "under 'state_dict'"),
    (lambda sd: {"model": sd}, "under 'model'"),
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "starts with 'module.'"),
])
def test_usual_wrappers_are_unwrapped_with_a_warning(tmp_path, wrap, found):
    sd = {k: v.float() for k, v in GOLDEN["state_dict"].items()}
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(sd), path)
    for source in (str(path), wrap(sd)):  # a file, or the dict itself as vae_pth
        with pytest.warns(UserWarning, match=found):
            loaded = FastWanVAE(z_dim=4, vae_pth=source, device="cpu", **STATS).model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    with pytest.warns(UserWarning, match=found):
        assert type(load_vae(path, device="cpu", **STATS)) is FastWanVAE


def test_other_nestings_list_their_keys(tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"ema": dict(GOLDEN["state_dict"]), "weights": dict(GOLDEN["state_dict"])}, path)
    with pytest.raises(CheckpointError, match=r"top-level keys are \['ema', 'weights'\] \(the weights may be nested"):
        FastWanVAE(z_dim=4, vae_pth=str(path), device="cpu", **STATS)


def test_chunk_frames_must_be_an_int_not_a_bool():
    with pytest.raises(ValueError, match="chunk_frames must be a positive int or None, got True"):
        FastWanVAE(z_dim=4, vae_pth=GOLDEN["state_dict"], device="cpu", chunk_frames=True, **STATS)
    with pytest.raises(ValueError, match="chunk_frames must be a positive int or None, got 0"):
        Wan2_2_VAE(vae_pth=GOLDEN22["state_dict"], z_dim=GOLDEN22["config"]["z_dim"], device="cpu", chunk_frames=0,
                   latents_mean=GOLDEN22["latents_mean"].tolist(), latents_std=GOLDEN22["latents_std"].tolist())
    model = _model("wan2.1")
    with pytest.raises(ValueError, match="got True"):
        model.encode(torch.zeros(1, 3, 5, 16, 16), SCALE, chunk_frames=True)


def test_meta_device_input_is_named():
    model = _model("wan2.1")
    with pytest.raises(ValueError, match="x is on the meta device"):
        model.encode(torch.zeros(1, 3, 5, 16, 16, device="meta"), SCALE)
    with pytest.raises(ValueError, match="z is on the meta device"):
        model.decode(torch.zeros(1, 4, 2, 2, 2, device="meta"), SCALE)


def test_random_weights_of_a_given_config():
    vae = FastWanVAE(vae_pth=None, device="cpu", config={"dim": 8, "z_dim": 4}, **STATS)
    assert vae.model.encoder.conv1.weight.shape[0] == 8 and vae.model.z_dim == 4
    [z] = vae.encode([torch.rand(3, 5, 16, 16) * 2 - 1])
    assert z.shape == (4, 2, 2, 2)
    vae22 = Wan2_2_VAE(vae_pth=None, device="cpu", config={"dim": 8, "dec_dim": 16})
    assert vae22.model.encoder.conv1.weight.shape[0] == 8 and vae22.model.decoder.head[2].weight.shape[1] == 16
    with pytest.raises(ValueError, match=r"config: unknown keys \['width'\]"):
        FastWanVAE(vae_pth=None, device="cpu", config={"width": 8})
    with pytest.raises(ValueError, match="config= is for random weights"):
        FastWanVAE(z_dim=4, vae_pth=GOLDEN["state_dict"], device="cpu", config={"dim": 8}, **STATS)
