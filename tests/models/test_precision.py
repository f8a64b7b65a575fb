"""Both precisions of every model family against float64 truth: float32 on the fast backends at most twice
python_ref's float32 error (parity), bfloat16 (the package's choice of backend) at most twice the error of
python_ref under bf16 autocast."""
import copy
from pathlib import Path

import pytest
import torch

import python_ref
from helpers import rel_err, skip_unless_supported
from vaekernels import Wan22VAEModel, WanVAEModel, use_backend

DATA = Path(__file__).parents[1] / "data"
# family -> (golden file, python_ref module class, fast model class, side of the extra clip)
FAMILIES = {
    "wan2.1": ("wan21_tiny_float64.pt", python_ref.wan21_vae.WanVAE_, WanVAEModel, 64),
    "wan2.2": ("wan22_tiny_float64.pt", python_ref.wan22_vae.WanVAE_, Wan22VAEModel, 128),
}
FAMILY = pytest.mark.parametrize("family", list(FAMILIES))
_cache = {}


def setup(family):
    """(golden, python_ref model, fast model, float32 scale), made once per family."""
    if family not in _cache:
        name, ref_class, fast_class, _ = FAMILIES[family]
        golden = torch.load(DATA / name, weights_only=True)
        ref = ref_class(**golden["config"]).eval()
        ref.load_state_dict(golden["state_dict"])
        fast = fast_class(**golden["config"]).eval().requires_grad_(False)
        fast.load_state_dict(golden["state_dict"])
        # float32, as the wrappers keep them: autocast leaves float64 operands alone
        scale = [golden["latents_mean"].float(), 1.0 / golden["latents_std"].float()]
        _cache[family] = golden, ref, fast, scale
    return _cache[family]


def truth_large(family):
    """A 5-frame clip larger than the golden ones (which have planes of at most 32x32 after the patches), a random
    latent, and python_ref's float64 outputs for them (python_ref in float64 matches the official code's golden
    outputs to ~1e-15)."""
    golden, ref, fast, _ = setup(family)
    side = FAMILIES[family][3]
    torch.manual_seed(side)
    video = torch.rand(1, 3, 5, side, side, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, golden["config"]["z_dim"], 2, 8, 8, dtype=torch.float64)
    ref64 = copy.deepcopy(ref).double()
    scale64 = [golden["latents_mean"], 1.0 / golden["latents_std"]]
    with torch.no_grad():
        return {"video": video, "z_random": z, "mu": ref64.encode(video, scale64),
                "decoded_random": ref64.decode(z, scale64)}


def case_of(family, case):
    return truth_large(family) if case == "large" else setup(family)[0]["cases"][case]


# Without AMX, bfloat16's 3x3 convs run as Winograd F(6x6, 3x3) on planes of 64x64 and more, F(4x4, 3x3) from 16x16,
# F(2x2, 3x3) on smaller ones: Wan2.1's case 3 (13x32x32) has planes of 32x32 to 4x4, the large clips (Wan2.1's 64x64,
# Wan2.2's 128x128 as 64x64 patches) planes of 64x64 to 8x8;
# with AMX, bf16 convs are oneDNN's (test_cpp_internals reruns this with AMX hidden)
def check_bfloat16(ref, fast, scale, video, z, truth_mu, truth_dec):
    """bf16 encode of ``video`` and decode of ``z`` by ``fast`` (the package's choice of backend): error against the
    float64 truths at most twice python_ref's under bf16 autocast."""
    fast16 = copy.deepcopy(fast).to(torch.bfloat16)  # a copy: a round trip would leave `fast` bf16-rounded
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref_mu = ref.encode(video.float(), scale)
        ref_dec = ref.decode(z.float(), scale)
    with torch.no_grad():
        mu = fast16.encode(video, scale)
        dec = fast16.decode(z, scale)
    assert mu.dtype == torch.bfloat16 and dec.dtype == torch.bfloat16
    e_ref_mu, e_ref_dec = rel_err(ref_mu, truth_mu), rel_err(ref_dec, truth_dec)
    # the bar for the fast mode: error vs float64 at most 2x that of bf16 autocast of the reference
    assert rel_err(mu, truth_mu) <= 2 * e_ref_mu, (rel_err(mu, truth_mu), e_ref_mu)
    assert rel_err(dec, truth_dec) <= 2 * e_ref_dec, (rel_err(dec, truth_dec), e_ref_dec)
    assert e_ref_mu > 1e-4  # autocast really ran in bf16 (float32 would be ~1e-7): the bar is not vacuous


@FAMILY
@pytest.mark.parametrize("case", [1, 2, 3, "large"])
def test_bfloat16_error_at_most_twice_autocast(family, case):
    _, ref, fast, scale = setup(family)
    c = case_of(family, case)
    check_bfloat16(ref, fast, scale, c["video"], c["z_random"], c["mu"], c["decoded_random"])


def test_bfloat16_on_trained_weights():
    """The same bar on the demo's trained model and the kind of clip it learnt (activations of trained weights are
    not those of random ones: larger, more aligned), decoding the clip's own latent."""
    from vaekernels.demo import DEMO_WEIGHTS, moving_clip
    from vaekernels.models import detect, load_state_dict

    weights = load_state_dict(DEMO_WEIGHTS)
    _, config = detect(weights)
    ref = python_ref.wan21_vae.WanVAE_(**config).eval()
    ref.load_state_dict({k: v.float() for k, v in weights.items()})
    fast = WanVAEModel(**config).eval().requires_grad_(False)
    fast.load_state_dict(ref.state_dict())
    z_dim = config["z_dim"]
    scale = [torch.zeros(z_dim), torch.ones(z_dim)]
    video = moving_clip(9, 64, 64, seed=3).unsqueeze(0).double()
    ref64 = copy.deepcopy(ref).double()
    with torch.no_grad():
        mu = ref64.encode(video, [s.double() for s in scale])
        decoded = ref64.decode(mu, [s.double() for s in scale])
    check_bfloat16(ref, fast, scale, video, mu, mu, decoded)


@FAMILY
@pytest.mark.parametrize("backend, case", [("cpp", 1), ("cpp", 2), ("cpp", 3), ("triton", 1)])  # the interpreter: 30 s a case
def test_float32_parity_with_python_ref(family, backend, case):
    """The fast backends' float32 paths (C++: Winograd 3x3 convs, oneDNN for the rest; Triton: its kernels in the
    interpreter) against float64 truth."""
    _, ref, fast, scale = setup(family)
    c = case_of(family, case)
    skip_unless_supported(backend, "causal_conv3d", c["video"].float())
    with torch.no_grad():
        ref_mu = ref.encode(c["video"].float(), scale)
        ref_dec = ref.decode(c["z_random"].float(), scale)
    with use_backend(backend):
        mu = fast.encode(c["video"].float(), scale)
        dec = fast.decode(c["z_random"].float(), scale)
    # float32 parity: at most ~2x python_ref's own float32 error, plus a few float32 ulps of the largest value
    # for when python_ref happens to be exact
    floor = 8 * torch.finfo(torch.float32).eps
    assert rel_err(mu, c["mu"]) <= 2 * rel_err(ref_mu, c["mu"]) + floor, (rel_err(mu, c["mu"]), rel_err(ref_mu, c["mu"]))
    assert rel_err(dec, c["decoded_random"]) <= 2 * rel_err(ref_dec, c["decoded_random"]) + floor
