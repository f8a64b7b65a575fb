"""The C++ backend's two precisions against float64 truth: float32 at most twice python_ref's float32 error
(parity), bfloat16 at most twice the error of python_ref under bf16 autocast."""
import copy
from pathlib import Path

import pytest
import torch

import python_ref
from vaekernels import WanVAEModel, use_backend
from vaekernels.backends import cpp

GOLDEN = torch.load(Path(__file__).parent / "data" / "wan21_tiny_float64.pt", weights_only=True)
# float32, as the wrapper keeps them: autocast leaves float64 operands alone
SCALE = [GOLDEN["latents_mean"].float(), 1.0 / GOLDEN["latents_std"].float()]


def rel_err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def models():
    ref = python_ref.WanVAE_(**GOLDEN["config"]).eval()
    ref.load_state_dict(GOLDEN["state_dict"])
    fast = WanVAEModel(**GOLDEN["config"]).eval()
    fast.load_state_dict(GOLDEN["state_dict"])
    return ref, fast


def _truth_64x64(ref):
    """A 5x64x64 clip, a random latent and python_ref's float64 outputs for them (the golden cases' planes are at most
    32x32; python_ref in float64 matches the original implementation's golden outputs to ~1e-15)."""
    torch.manual_seed(64)
    video = torch.rand(1, 3, 5, 64, 64, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, GOLDEN["config"]["z_dim"], 2, 8, 8, dtype=torch.float64)
    ref64 = copy.deepcopy(ref).double()
    scale64 = [GOLDEN["latents_mean"], 1.0 / GOLDEN["latents_std"]]
    with torch.no_grad():
        return {"video": video, "z_random": z, "mu": ref64.encode(video, scale64),
                "decoded_random": ref64.decode(z, scale64)}


# without AMX, case 3 (13x32x32) runs the full-resolution 3x3 convs of bfloat16 as Winograd F(4x4, 3x3), the 64x64
# clip as F(6x6, 3x3), the others F(2x2, 3x3); with AMX, bf16 convs are oneDNN's (test_cpp_backend reruns this with
# AMX hidden)
@pytest.mark.parametrize("case", [1, 2, 3, "64x64"])
def test_bfloat16_error_at_most_twice_autocast(models, case):
    ref, fast = models
    c = _truth_64x64(ref) if case == "64x64" else GOLDEN["cases"][case]
    fast16 = copy.deepcopy(fast).to(torch.bfloat16)  # a copy: a round trip would leave `fast` bf16-rounded
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref_mu = ref.encode(c["video"].float(), SCALE)
        ref_dec = ref.decode(c["z_random"].float(), SCALE)
    mu = fast16.encode(c["video"], SCALE)
    dec = fast16.decode(c["z_random"], SCALE)
    assert mu.dtype == torch.bfloat16 and dec.dtype == torch.bfloat16
    e_ref_mu, e_ref_dec = rel_err(ref_mu, c["mu"]), rel_err(ref_dec, c["decoded_random"])
    # the bar for the fast mode: error vs float64 at most 2x that of bf16 autocast of the reference
    assert rel_err(mu, c["mu"]) <= 2 * e_ref_mu, (rel_err(mu, c["mu"]), e_ref_mu)
    assert rel_err(dec, c["decoded_random"]) <= 2 * e_ref_dec, (rel_err(dec, c["decoded_random"]), e_ref_dec)
    assert e_ref_mu > 1e-4  # autocast really ran in bf16 (float32 would be ~1e-7): the bar is not vacuous


@pytest.mark.skipif(bool(cpp.available()), reason=str(cpp.available()))
@pytest.mark.parametrize("case", [1, 2, 3])
def test_float32_parity_with_python_ref(models, case):
    """The C++ float32 path (Winograd 3x3 convs, oneDNN for the rest) against float64 truth."""
    ref, fast = models
    c = GOLDEN["cases"][case]
    with torch.no_grad():
        ref_mu = ref.encode(c["video"].float(), SCALE)
        ref_dec = ref.decode(c["z_random"].float(), SCALE)
    with use_backend("cpp"):
        mu = fast.encode(c["video"].float(), SCALE)
        dec = fast.decode(c["z_random"].float(), SCALE)
    # float32 parity: at most ~2x python_ref's own float32 error, plus a few float32 ulps of the largest value
    # for when python_ref happens to be exact
    floor = 8 * torch.finfo(torch.float32).eps
    assert rel_err(mu, c["mu"]) <= 2 * rel_err(ref_mu, c["mu"]) + floor, (rel_err(mu, c["mu"]), rel_err(ref_mu, c["mu"]))
    assert rel_err(dec, c["decoded_random"]) <= 2 * rel_err(ref_dec, c["decoded_random"]) + floor
