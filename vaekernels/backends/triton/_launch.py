"""The one way this backend starts a kernel: ``launch`` runs it, or, inside ``recording()``, notes the compile
case the JIT would build for it and runs nothing.

A noted case is what ``vaekernels.kernel_report`` compiles for sm_80 and sm_90: the kernel, its signature, its
constexprs (the launch's, and every integer the JIT turns into one: those equal to 1) and the arguments it would
assume 16-divisible, all as Triton's own JIT decides them (its ``native_specialize_impl``, with each kernel's
``do_not_specialize``). Recording runs nothing, so it needs no GPU: the kernel report records a whole encode and
decode of a clip on CPU tensors (outputs are left unwritten) and so compiles exactly the variants that clip
would make the JIT build.
"""
from __future__ import annotations

import contextlib
import functools

from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

_recorded: dict | None = None


@contextlib.contextmanager
def recording():
    """Within: launches are noted (in the yielded dict, one entry per distinct compile case), not run."""
    global _recorded
    outer, _recorded = _recorded, {}
    try:
        yield _recorded
    finally:
        _recorded = outer


def is_recording() -> bool:
    return _recorded is not None


def launch(kernel, grid, args, constexprs, *, num_warps, num_stages, name, tensor_cores, loop_budget=None):
    """``kernel[grid](*args, **constexprs)``. ``name`` (what the case is called in reports), ``tensor_cores``
    (whether its dots should use them) and ``loop_budget`` (the most SASS instructions one main-loop step may
    take besides its tensor-core ones, or None, or ``{arch: that}`` with None for the other architectures) describe
    the case for the kernel report."""
    if _recorded is None:
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    params = _params(kernel)
    signature, fixed, divisible = {}, dict(constexprs), []
    for param, value in zip(params, args):
        kind, spec = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        if kind == "constexpr":
            fixed[param.name] = spec
        else:
            signature[param.name] = kind
            if spec and "D" in spec:
                divisible.append(param.name)
    signature.update({name_: "constexpr" for name_ in fixed})
    key = (kernel.fn.__qualname__, tuple(signature.items()), tuple(sorted(fixed.items(), key=str)), tuple(divisible),
           num_warps, num_stages)
    if key not in _recorded:
        _recorded[key] = {
            "name": name, "fn": kernel, "signature": {p.name: signature[p.name] for p in params},
            "constexprs": fixed,
            "attrs": {([p.name for p in params].index(a),): [["tt.divisibility", 16]] for a in divisible},
            "num_warps": num_warps, "num_stages": num_stages, "tensor_cores": tensor_cores,
            "loop_budget": loop_budget,
        }


@functools.cache
def _params(kernel):
    """The kernel's parameters as the JIT sees them (constexpr, do_not_specialize); under the interpreter, of the
    JIT function its decorator would have made."""
    return getattr(kernel, "params", None) or JITFunction(kernel.fn, **kernel.kwargs).params


def interpreted(x) -> bool:
    """Whether kernels on ``x`` run in Triton's interpreter (CPU tensors, unless only being recorded: a recording
    notes the GPU's configuration)."""
    return x.device.type == "cpu" and _recorded is None
