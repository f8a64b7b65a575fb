"""Compile every Triton kernel configuration for sm_80 and sm_90 without a GPU and report its resources.

Each module of ``vaekernels.backends.triton`` lists the kernel configurations its host code can
choose in ``AOT_CASES``. For each one and each architecture this compiles the kernel, reads the
shared memory from the metadata, re-runs the bundled ptxas with ``-v`` for registers and spills,
and counts tensor-core instructions in the PTX. A configuration that spills, needs more shared
memory than the device gives one block, or (when it should) uses no tensor cores would fail
or be slow on the real GPU; ``tests/test_triton_aot.py`` asserts none does.

Compilation needs a process where Triton was imported without ``TRITON_INTERPRET=1`` (under the
interpreter even ``triton.language``'s own helpers are interpreted functions), so ``reports()``
called from an interpreting process (the tests) runs this module in a child process without it.
Compiled kernels land in Triton's on-disk cache, so later runs only re-run ptxas.

    python -m vaekernels.kernel_report          # the table; exit status 1 if any problem
    python -m vaekernels.kernel_report --json   # the reports as JSON (what reports() reads)
"""
from __future__ import annotations

import functools
import json
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from . import envs

ARCHS = (80, 90)
SHARED_LIMIT = {80: 166_912, 90: 232_448}  # bytes of dynamic shared memory one block may use
_PTXAS_ARCH = {80: "sm_80", 90: "sm_90a"}
_TENSOR_CORE_OPS = {80: ("mma.sync",), 90: ("wgmma.mma_async", "mma.sync")}
_PACKAGE = "vaekernels.backends.triton"


@dataclass(frozen=True)
class Report:
    kernel: str
    config: str
    arch: int
    registers: int
    shared: int
    spill_stores: int
    spill_loads: int
    tensor_core_instrs: int
    tensor_cores_expected: bool

    @property
    def problems(self):
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.shared > SHARED_LIMIT[self.arch]:
            out.append(f"shared memory {self.shared} B > {SHARED_LIMIT[self.arch]} B")
        if self.tensor_cores_expected and not self.tensor_core_instrs:
            out.append("no tensor-core instructions")
        return out


def kernel_modules():
    """Names of the Triton backend's modules (those that exist yet)."""
    pkg = importlib.util.find_spec(_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.submodule_search_locations) if not m.name.startswith("_"))


def aot_cases(module: str):
    return getattr(importlib.import_module(f"{_PACKAGE}.{module}"), "AOT_CASES", [])


def _ptxas_usage(ptx: str, arch: int):
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={_PTXAS_ARCH[arch]}", src,
                              "-o", os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"ptxas failed for sm_{arch}:\n{log}")
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return regs, int(spills.group(1)), int(spills.group(2))


@functools.cache
def compile_case(module: str, index: int, arch: int) -> Report:
    """Compile ``AOT_CASES[index]`` of ``module`` for ``sm_{arch}`` and measure it (cached per process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    case = aot_cases(module)[index]
    fn = case["fn"]
    # what the JIT specialises on the model's tensors: a case may state it ("attrs": e.g. strides and
    # channel counts divisible by 16); by default pointers are 16-byte aligned, as fresh tensors are
    attrs = case.get("attrs") or {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
                                  for name, ty in case["signature"].items() if ty.startswith("*")}
    compiled = triton.compile(ASTSource(fn, case["signature"], case["constexprs"], attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": case["num_warps"], "num_stages": case["num_stages"]})
    ptx = compiled.asm["ptx"]
    regs, spill_st, spill_ld = _ptxas_usage(ptx, arch)
    mma = sum(ptx.count(op) for op in _TENSOR_CORE_OPS[arch])
    config = ", ".join(f"{k}={v}" for k, v in case["constexprs"].items() if k.isupper()) + \
        f", warps={case['num_warps']}, stages={case['num_stages']}"
    return Report(case["name"], config, arch, regs, compiled.metadata.shared, spill_st, spill_ld, mma,
                  case["tensor_cores"])


def all_cases():
    """(module, index) of every configuration of every module."""
    return [(m, i) for m in kernel_modules() for i in range(len(aot_cases(m)))]


def _compile_here(job):
    return compile_case(*job)


def _compile_all():
    jobs = [(m, i, arch) for m, i in all_cases() for arch in ARCHS]
    with ProcessPoolExecutor(os.cpu_count()) as pool:  # compiles and ptxas runs are single-threaded
        return dict(zip(jobs, pool.map(_compile_here, jobs)))


@functools.cache
def reports():
    """{(module, index, arch): Report} for every case, compiled in this process if it is not
    interpreting, else in a child process that is not."""
    if not envs.TRITON_INTERPRET:
        return _compile_all()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this package's parent, for -m
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", __name__, "--json"], env=env, capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"kernel report failed:\n{res.stderr}")
    return {(r["module"], r["index"], r["arch"]): Report(**r["report"]) for r in json.loads(res.stdout)}


def main(argv):
    results = reports()
    if "--json" in argv:
        print(json.dumps([{"module": m, "index": i, "arch": a, "report": asdict(r)}
                          for (m, i, a), r in results.items()]))
        return 1 if any(r.problems for r in results.values()) else 0
    header = ("kernel", "config", "arch", "registers", "shared B", "spills B (st/ld)", "tensor-core instrs", "problems")
    table = [header] + [(r.kernel, r.config, f"sm_{r.arch}", str(r.registers), str(r.shared),
                         f"{r.spill_stores}/{r.spill_loads}",
                         str(r.tensor_core_instrs) + ("" if r.tensor_cores_expected else " (not expected)"),
                         "; ".join(r.problems) or "-") for r in results.values()]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 1 if any(r.problems for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
