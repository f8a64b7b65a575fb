"""Every Triton kernel configuration compiles for sm_80 and sm_90 without spills, within the
device's shared memory, and on tensor cores where it should (vaekernels.kernel_report).

Without CUDA this process runs the interpreter (conftest sets TRITON_INTERPRET=1); the report compiles in a
child process without it, so what is checked is the real GPU code.
"""
import importlib
import os

import pytest
import torch

from vaekernels import kernel_report, use_backend
from vaekernels.backends.triton._launch import recording

CASES = [(m, i, arch) for m, i in kernel_report.all_cases() for arch in kernel_report.ARCHS]


def _id(case):
    module, index, arch = case
    return f"{kernel_report.aot_cases(module)[index]['name']}-sm_{arch}"


@pytest.fixture(scope="module")
def reports():
    return kernel_report.reports()


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_configuration_fits(case, reports):
    report = reports[case]
    assert not report.problems, f"{report.kernel} ({report.config}) on sm_{report.arch}: {report.problems}"


def test_compiled_outside_the_interpreter(reports):
    interpreting = not torch.cuda.is_available()  # conftest: the interpreter only where there is no CUDA
    assert (os.environ.get("TRITON_INTERPRET") == "1") == interpreting
    models = {(m, i, a) for m, i, a in reports if m == "models"}
    assert set(reports) == set(CASES) | models and models  # the modules' cases and the recorded clips' ones
    # our kernels' interpreter switch is a constexpr, off in every compiled case
    for module in ("rms_norm_silu", "spatial_attention"):
        for case in kernel_report.aot_cases(module):
            assert not case["constexprs"].get("UPCAST", False), case["name"]
    assert any(r.tensor_core_instrs for r in reports.values())  # real PTX, not an interpreted stand-in
    # and the backend this process uses still runs the interpreter (without CUDA)
    kernel = importlib.import_module("vaekernels.backends.triton.spatial_attention")._attention_kernel
    assert ("Interpreted" in type(kernel).__name__) == interpreting


def test_recorded_model_variants_fit(reports):
    """Every kernel variant that a bf16 encode and decode of 480x832 and 720x1280 clips launch (both families,
    recorded: kernel_report.model_cases) compiles without spills, within shared memory, on tensor cores where it
    should, and within its main-loop instruction budget."""
    problems = [f"{r.kernel} ({r.config}) on sm_{r.arch}: {r.problems}"
                for (m, _, _), r in reports.items() if m == "models" and r.problems]
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(90 not in kernel_report.ARCHS, reason="the aim is sm_90's; VAEKERNELS_REPORT_ARCHS leaves it out")
def test_recorded_3x3x3_convs_are_held_to_the_aim(reports):
    """On sm_90 the 3x3x3 convs whose K steps are at most 32 deep are held to 100 instructions per step besides the
    tensor-core ones (the budget test_recorded_model_variants_fit applies); the RGB output conv runs the narrow
    kernel, within the general budget."""
    conv = importlib.import_module("vaekernels.backends.triton.causal_conv3d")
    models = {r.kernel.split(": ", 1)[1]: r for (m, _, arch), r in reports.items() if m == "models" and arch == 90}
    aimed = {name for name, r in models.items() if r.loop_budget == conv.LOOP_AIM}
    assert {"causal_conv3d 3x3x3 96->96 bf16 n64+32 k32", "causal_conv3d 3x3x3 160->160 bf16 n128+32 k32"} <= aimed
    assert all(" 3x3x3 " in name and not name.split(" k")[-1].startswith("64") for name in aimed)
    assert models["causal_conv3d 3x3x3 96->3 bf16 narrow j32 k32"].loop_budget == conv.LOOP_BUDGET


@pytest.mark.parametrize("family", ["wan2.1", "wan2.2"])
def test_recorded_variants_do_not_depend_on_clip_length(family):
    """Why the report records 5-frame clips for 81-frame ones: frame and pixel counts are not specialised on, so
    the variants a clip launches depend on its frame size only (released configuration, bf16, 64x64 frames;
    nothing runs, the weights are never read)."""
    from vaekernels import models
    entry = models.get(family)
    with torch.device("meta"):
        model = entry.model_class(**entry.released)
    model = model.to_empty(device="cpu").to(torch.bfloat16).eval()
    short = kernel_report.record_clip(model, kernel_report.CLIP_FRAMES, 64, 64)
    longer = kernel_report.record_clip(model, 17, 64, 64)
    assert short and set(short) == set(longer)
    # the warm-up helper launches them all (so on CUDA it compiles what such clips need)
    with recording() as warmed, use_backend("auto", order_of="cuda"), torch.no_grad():
        model.warm_up(64, 64)
    assert set(warmed) == set(longer)


def test_warm_up_runs_and_times():
    """On CPU (no recording) the helper runs a real encode and decode and says how long it took."""
    from helpers import tiny_model
    model = tiny_model("wan2.2")
    assert 0 < model.warm_up(32, 48) < 60
    with pytest.raises(ValueError, match="even"):  # Wan2.2 refuses odd frame sizes, as encode does
        model.warm_up(31, 48)
