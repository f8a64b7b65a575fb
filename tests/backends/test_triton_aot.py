"""Every Triton kernel configuration compiles for sm_80 and sm_90 without spills, within the
device's shared memory, and on tensor cores where it should (vaekernels.kernel_report).

Without CUDA this process runs the interpreter (conftest sets TRITON_INTERPRET=1); the report compiles in a
child process without it, so what is checked is the real GPU code.
"""
import importlib
import os

import pytest
import torch

from vaekernels import kernel_report

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
    assert set(reports) == set(CASES)
    # our kernels' interpreter switch is a constexpr, off in every compiled case
    for module in ("rms_norm_silu", "spatial_attention"):
        for case in kernel_report.aot_cases(module):
            assert not case["constexprs"].get("UPCAST", False), case["name"]
    assert any(r.tensor_core_instrs for r in reports.values())  # real PTX, not an interpreted stand-in
    # and the backend this process uses still runs the interpreter (without CUDA)
    kernel = importlib.import_module("vaekernels.backends.triton.spatial_attention")._attention_kernel
    assert ("Interpreted" in type(kernel).__name__) == interpreting
