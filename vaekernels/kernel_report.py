"""Compile every Triton kernel variant for sm_80 and sm_90 without a GPU and report its resources.

The variants: exactly those a bf16 encode and decode of 480x832 and 720x1280 clips launch on CUDA, for both
families (``model_cases``: recorded by running the models on CPU tensors with launches noted, not run; see
``backends.triton._launch``), and the paths those leave out, which each module of
``vaekernels.backends.triton`` lists in ``AOT_CASES``. For each one and each architecture
(``VAEKERNELS_REPORT_ARCHS``, default both) this compiles the kernel, reads the
shared memory from the metadata, re-runs the bundled ptxas with ``-v`` for registers and spills,
counts tensor-core instructions in the PTX, and reads the main loop of the machine code (SASS, by
the bundled nvdisasm): its instructions per warp per iteration and how many of them are tensor-core
instructions. A configuration that spills, needs more shared memory than the device gives one block,
(when it should) uses no tensor cores, or spends more instructions besides its tensor-core ones per loop step
than its case's budget would fail or be slow on the real GPU; ``tests/test_triton_aot.py`` asserts none does.

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

ARCHS = envs.report_archs()
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
    loop_instrs: int  # SASS instructions in one iteration of the main loop (one K step), per warp
    loop_mma: int  # of which tensor-core instructions (HMMA / HGMMA)
    loop_budget: int | None  # the most loop_instrs - loop_mma the case allows (None: no budget)

    @property
    def problems(self):
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.shared > SHARED_LIMIT[self.arch]:
            out.append(f"shared memory {self.shared} B > {SHARED_LIMIT[self.arch]} B")
        if self.tensor_cores_expected and not self.tensor_core_instrs:
            out.append("no tensor-core instructions")
        if self.loop_budget is not None and self.loop_instrs - self.loop_mma > self.loop_budget:
            out.append(f"{self.loop_instrs - self.loop_mma} instructions besides tensor-core ones per main-loop step > "
                       f"budget {self.loop_budget}")
        return out


def kernel_modules():
    """Names of the Triton backend's modules (those that exist yet)."""
    pkg = importlib.util.find_spec(_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.submodule_search_locations) if not m.name.startswith("_"))


def aot_cases(module: str):
    if module == "models":
        return model_cases()
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


_SASS_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?);")
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
_SASS_MMA = ("HMMA", "HGMMA")


def main_loop(sass: str):
    """``(instructions, tensor-core instructions)`` of the main loop in ``nvdisasm -c`` output: of the loops
    (a label and a later branch back to it) whose body holds no other loop, the one with the most tensor-core
    instructions, else the longest. NOPs (alignment padding) are not counted. (0, 0) if there is no loop."""
    instrs, labels = [], {}
    for line in sass.splitlines():
        label = _SASS_LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instrs)
        found = _SASS_INSTR.search(line)
        if found:
            instrs.append(found.group(1).strip())
    loops = []
    for end, ins in enumerate(instrs):
        target = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ins)
        if target and labels.get(target.group(1), end + 1) <= end:
            loops.append((labels[target.group(1)], end))
    inner = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    best = (0, 0)
    for a, b in inner:
        ops = [_opcode(i) for i in instrs[a:b + 1]]
        ops = [op for op in ops if op != "NOP"]
        best = max(best, (len(ops), sum(op in _SASS_MMA for op in ops)), key=lambda t: (t[1], t[0]))
    return best


def _opcode(instr):
    """``HGMMA`` of ``@P0 HGMMA.64x16x16.F32.BF16 R24, ...``."""
    words = instr.split()
    return words[1 if words[0].startswith("@") else 0].split(".")[0]


def _sass(cubin: bytes):
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"nvdisasm failed:\n{res.stderr}")
    return res.stdout


def _portable(case):
    """``case`` with its kernel named (module, attribute) instead of held, so that it can go to a worker process."""
    fn = case["fn"]
    module = sys.modules[getattr(fn, "fn", fn).__module__]
    attr = next(name for name, value in vars(module).items() if value is fn)
    return {**case, "fn": (module.__name__, attr)}


def _compile(case, arch: int) -> Report:
    """Compile a portable ``case`` for ``sm_{arch}`` and measure it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(case["fn"][0]), case["fn"][1])
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
    loop_instrs, loop_mma = main_loop(_sass(compiled.asm["cubin"]))
    return Report(case["name"], config, arch, regs, compiled.metadata.shared, spill_st, spill_ld, mma,
                  case["tensor_cores"], loop_instrs, loop_mma, _budget(case.get("loop_budget"), arch))


def _budget(budget, arch):
    """A case's loop budget on ``arch``: one for all, or ``{arch: budget}`` (key None: the other architectures')."""
    return budget.get(arch, budget.get(None)) if isinstance(budget, dict) else budget


@functools.cache
def compile_case(module: str, index: int, arch: int) -> Report:
    """Compile ``AOT_CASES[index]`` of ``module`` (or of the recorded model cases, module ``"models"``) for
    ``sm_{arch}`` and measure it (cached per process)."""
    return _compile(_portable(aot_cases(module)[index]), arch)


# The clips whose kernel variants the report compiles, all of them: what a bf16 encode and decode of each, by
# either family, launches on CUDA with ``auto`` (recorded, not run: backends.triton._launch). Frame and pixel
# counts are not specialised on, so a clip's variants depend on its frame size, not its length (the chunks
# of 5 frames and of 81 are the same kinds: tests/backends/test_triton_aot.py records both and compares):
# the clips are recorded 5 frames long, which makes 480x832x81 and 720x1280x81's variants.
CLIPS = ((480, 832), (720, 1280))
CLIP_FRAMES = 5


def record_clip(model, frames, height, width):
    """{key: case} of what ``model``'s encode and decode of a ``frames x height x width`` clip launch on CUDA (its
    own dtype), recorded on CPU tensors with nothing run (the outputs are never written)."""
    import torch

    from .backends import use_backend
    from .backends.triton._launch import recording

    x = torch.zeros(1, 3, frames, height, width, dtype=next(model.parameters()).dtype)
    with recording() as cases, use_backend("auto", order_of="cuda"), torch.no_grad():
        mu, _ = model.encode_raw(x, check_finite=False)
        scale = (torch.zeros(mu.shape[1]), torch.ones(mu.shape[1]))
        model.decode(torch.zeros_like(mu), scale, check_finite=False)
    return cases


@functools.cache
def model_cases():
    """The compile cases of ``CLIPS`` (both families, bf16; released configurations, weights never read)."""
    import torch

    from . import models

    cases = {}
    for name in ("wan2.1", "wan2.2"):
        entry = models.get(name)
        with torch.device("meta"):
            model = entry.model_class(**entry.released)
        model = model.to_empty(device="cpu").to(torch.bfloat16).eval()
        for height, width in CLIPS:
            for key, case in record_clip(model, CLIP_FRAMES, height, width).items():
                cases.setdefault(key, {**case, "name": f"{entry.title} {height}x{width}: {case['name']}"})
    return list(cases.values())


def all_cases():
    """(module, index) of every configuration of every module (the modules' own; model_cases() are module
    "models", compiled by reports())."""
    return [(m, i) for m in kernel_modules() for i in range(len(aot_cases(m)))]


def _compile_here(job):
    return _compile(*job)


def _compile_all():
    jobs = [(m, i, arch) for m, i in all_cases() for arch in ARCHS]
    jobs += [("models", i, arch) for i in range(len(model_cases())) for arch in ARCHS]
    with ProcessPoolExecutor(os.cpu_count()) as pool:  # compiles and ptxas runs are single-threaded
        return dict(zip(jobs, pool.map(_compile_here, [(_portable(aot_cases(m)[i]), arch) for m, i, arch in jobs])))


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
    header = ("kernel", "config", "arch", "registers", "shared B", "spills B (st/ld)", "tensor-core instrs",
              "loop instrs / step (tensor-core)", "problems")
    table = [header] + [(r.kernel, r.config, f"sm_{r.arch}", str(r.registers), str(r.shared),
                         f"{r.spill_stores}/{r.spill_loads}",
                         str(r.tensor_core_instrs) + ("" if r.tensor_cores_expected else " (not expected)"),
                         f"{r.loop_instrs} ({r.loop_mma})" + (f" <= {r.loop_budget}" if r.loop_budget else ""),
                         "; ".join(r.problems) or "-") for r in results.values()]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 1 if any(r.problems for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
