"""FastAutoencoderKLWan and accelerate(pipe) against diffusers itself (a test dependency), both Wan configurations.

The oracle is diffusers' own AutoencoderKLWan run in float64 on the same random weights; the reference for the
tolerance rule (tests/helpers.py) is diffusers in float32. Our ops may round at other places than plain PyTorch but
never more often: the C++ backend's float32 rule (twice plain PyTorch's error plus 1e-6 of the largest value).
"""
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, \
    WanTransformer3DModel

from helpers import TOLERANCE, assert_close_to_oracle, rel_err
from vaekernels import FastAutoencoderKLWan, accelerate, use_backend
from vaekernels.models.wan.diffusers_keys import model_of, ours

FACTOR, REL_FLOOR, _ = TOLERANCE["cpp", torch.float32]
CONFIGS = {
    "wan2.1": dict(base_dim=8, z_dim=4, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0]),
    "wan2.2": dict(base_dim=8, decoder_base_dim=12, z_dim=6, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 6, latents_std=[1.0] * 6),
}
CLIP = (1, 3, 9, 32, 48)  # 1 + 4*2 frames; 32x48 is a multiple of both families' space factors


def _pair(family, seed=0):
    """diffusers' model with random weights (not its init: norms' gammas of ones test too little), and ours
    holding a copy of them."""
    torch.manual_seed(seed)
    ref = AutoencoderKLWan(**CONFIGS[family]).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    fast = FastAutoencoderKLWan(**CONFIGS[family]).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _clip(seed=1):
    return torch.rand(*CLIP, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _close(actual, oracle, reference):
    assert_close_to_oracle(actual, oracle.double(), reference, factor=FACTOR, rel_floor=REL_FLOOR)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_key_table_maps_every_parameter(family):
    ref = AutoencoderKLWan(**CONFIGS[family])
    cls, args = model_of(ref.config)
    mapped = {ours(k, ref.config.is_residual, ref.config.num_res_blocks): tuple(v.shape)
              for k, v in ref.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in cls(**args).state_dict().items()}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_encode_and_decode_match_diffusers(family):
    ref, fast = _pair(family)
    oracle = AutoencoderKLWan(**CONFIGS[family]).double().eval()
    oracle.load_state_dict(ref.state_dict())
    x = _clip()
    with torch.no_grad():
        got, want, want64 = (m.encode(x.to(m.dtype)).latent_dist for m in (fast, ref, oracle))
        for attr in ("mean", "logvar", "std", "var"):
            _close(getattr(got, attr), getattr(want64, attr), getattr(want, attr))
        _close(got.mode(), want64.mode(), want.mode())
        _close(got.kl(), want64.kl(), want.kl())
        samples = [d.sample(torch.Generator().manual_seed(7)) for d in (got, want, want64)]
        _close(samples[0], samples[2], samples[1])
        z = want.mean
        videos = [m.decode(z.to(m.dtype)).sample for m in (fast, ref, oracle)]
    assert videos[0].shape == CLIP and videos[0].dtype == torch.float32
    _close(*[videos[0], videos[2], videos[1]])
    with torch.no_grad():
        (tup,) = fast.decode(z, return_dict=False)
        (post,) = fast.encode(x, return_dict=False)
    assert torch.equal(tup, videos[0]) and torch.equal(post.mean, got.mean)


def test_weights_are_shared_and_changes_seen():
    ref, fast = _pair("wan2.1")
    x = _clip()
    with torch.no_grad():
        fast.encode(x)
        engine = fast._engine_model()
        ptrs = {p.data_ptr() for p in fast.parameters()}
        assert {p.data_ptr() for p in engine.parameters()} == ptrs  # no second copy
        other, _ = _pair("wan2.1", seed=3)
        fast.load_state_dict(other.state_dict())  # in place: a later call uses the new weights
        _close(fast.encode(x).latent_dist.mean, other.double().encode(x.double()).latent_dist.mean,
               other.float().encode(x).latent_dist.mean)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_save_pretrained_and_from_pretrained(family, tmp_path):
    ref, fast = _pair(family)
    fast.save_pretrained(tmp_path / "vae")
    loaded = FastAutoencoderKLWan.from_pretrained(tmp_path, subfolder="vae", torch_dtype=torch.float32).eval()
    plain = AutoencoderKLWan.from_pretrained(tmp_path / "vae")  # diffusers reads what we wrote
    for k, v in fast.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v) and torch.equal(plain.state_dict()[k], v), k
    x = _clip()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).latent_dist.mean, fast.encode(x).latent_dist.mean)
    half = FastAutoencoderKLWan.from_pretrained(tmp_path / "vae", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.config.z_dim == CONFIGS[family]["z_dim"]
    with torch.no_grad():
        assert half.encode(x.bfloat16()).latent_dist.mean.dtype == torch.bfloat16


def test_tiling_and_slicing_are_accepted():
    """Tiling is not used (the same result, bit for bit); slicing runs the batch one video at a time."""
    _, fast = _pair("wan2.1")
    x = torch.cat([_clip(1), _clip(2)])
    with torch.no_grad():
        z = fast.encode(x).latent_dist.mean
        plain = fast.decode(z).sample
        fast.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16)
        assert torch.equal(fast.decode(z).sample, plain)
        fast.disable_tiling()
        one_by_one = torch.cat([fast.decode(z[:1]).sample, fast.decode(z[1:]).sample])
        fast.enable_slicing()
        assert torch.equal(fast.decode(z).sample, one_by_one)
        fast.disable_slicing()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gradients_match_diffusers(family):
    """diffusers' class leaves its parameters requiring grad, and trains: so does ours, through the fused ops, with
    diffusers' gradients (float64, every parameter and the input) of a loss through the posterior and the video."""
    ref, fast = _pair(family)

    def gradients(model):
        model = model.double()
        x = _clip()[:, :, :5].double().requires_grad_(True)
        posterior = model.encode(x).latent_dist
        video = model.decode(posterior.mean).sample
        weights = torch.randn(video.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        loss = (video * weights).sum() + posterior.logvar.square().sum()
        names = [n for n, p in model.named_parameters()]
        return dict(zip(names + ["x"], torch.autograd.grad(loss, [model.get_parameter(n) for n in names] + [x])))

    want = gradients(ref)
    with use_backend("torch"):  # the only backend that runs float64
        got = gradients(fast)
    assert got.keys() == want.keys()
    for name, g in got.items():
        # float64 throughout: summation order only
        assert rel_err(g, want[name]) <= 1e-6, name


def _pipeline(family):
    torch.manual_seed(0)
    z_dim = CONFIGS[family]["z_dim"]
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=z_dim, out_channels=z_dim, text_dim=16, freq_dim=32, ffn_dim=16,
                                        num_layers=1, rope_max_seq_len=32)
    vae, _ = _pair(family)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       expand_timesteps=family == "wan2.2").to(torch.float32)


def _generate(pipe, output_type="pt"):
    embeds = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(4))
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=-embeds, height=32, width=48, num_frames=9,
                num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(5),
                output_type=output_type).frames


@pytest.mark.parametrize("family", list(CONFIGS))
def test_accelerate_a_wan_pipeline(family):
    pipe = _pipeline(family)
    before, latents = _generate(pipe), _generate(pipe, "latent")
    # the oracle: diffusers in float64 decoding the pipeline's latents, post-processed as the pipeline does
    oracle = AutoencoderKLWan(**CONFIGS[family]).double().eval()
    oracle.load_state_dict(pipe.vae.state_dict())
    stats = [torch.tensor(CONFIGS[family][k], dtype=torch.float64).view(1, -1, 1, 1, 1)
             for k in ("latents_mean", "latents_std")]
    with torch.no_grad():
        video = oracle.decode(latents.double() * stats[1] + stats[0]).sample
    expected = (video / 2 + 0.5).clamp(0, 1).transpose(1, 2)  # [N, T, C, H, W], as output_type="pt"
    vae, ptrs = pipe.vae, [p.data_ptr() for p in pipe.vae.parameters()]
    assert accelerate(pipe) is pipe and pipe.vae is vae and isinstance(vae, FastAutoencoderKLWan)
    assert [p.data_ptr() for p in pipe.vae.parameters()] == ptrs  # the pipeline's weights, not a copy
    after = _generate(pipe)
    _close(after, expected, before)  # plain diffusers' pipeline output is the float32 reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accelerate(pipe)  # a second call: nothing, no warning
    assert type(pipe.vae) is FastAutoencoderKLWan


def test_accelerate_leaves_other_vaes_with_a_warning():
    class Pipe:
        vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)

    pipe = Pipe()
    with pytest.warns(RuntimeWarning, match="AutoencoderKL, not diffusers' AutoencoderKLWan"):
        accelerate(pipe)
    assert type(pipe.vae) is AutoencoderKL


def test_max_memory_reaches_every_call():
    _, fast = _pair("wan2.1")
    x = _clip()
    with torch.no_grad():
        z = fast.encode(x).latent_dist.mean
        plain = fast.decode(z).sample
        fast.max_memory = "1KiB"
        with pytest.raises(ValueError, match="is less than this encode"):
            fast.encode(x)
        with pytest.raises(ValueError, match="is less than this decode"):
            fast.decode(z)
        # the limit of one latent frame per chunk: the same result within float32 rounding of other chunk ends
        fast.max_memory = fast._engine_model().estimate_memory("decode", z.shape, chunk_frames=1).bytes
        _close(fast.decode(z).sample, plain.double(), plain)
    pipe = _pipeline("wan2.1")
    with pytest.raises(ValueError, match="max_memory must be"):
        accelerate(pipe, max_memory="enough")
    assert type(pipe.vae) is AutoencoderKLWan  # a bad value changes nothing
    assert accelerate(pipe, max_memory="4GiB").vae.max_memory == "4GiB"
    assert accelerate(pipe, max_memory="1GiB").vae.max_memory == "1GiB"  # a second call sets it
    assert accelerate(pipe).vae.max_memory == "1GiB"
