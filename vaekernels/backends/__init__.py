"""Backend choice, per op and per call.

A backend is a module holding the kernels it has (functions named after the ops, taking the op's arguments
in schema order) and ``supports(op, *args) -> str | None``: why it cannot run this op on these arguments
(not importable, wrong device or dtype, an argument beyond its kernels), or None. A kernel the module does
not have is a reason too. The dispatcher asks with the op's arguments; callers that only need the device
and dtype's answer (``memory_span``) may pass the main tensor alone.

A backend may also define ``defer(op, *args) -> str | None``: why ``auto`` should leave a call it can run to the
next backend (another kernel is faster for it: the Triton attention leaves CUDA calls to PyTorch's SDPA).

The choice: an explicit request (``use_backend`` context, else ``VAEKERNELS_BACKEND``) runs or raises
``BackendUnavailable`` with its reasons; ``auto`` takes the first backend of the device's order (fastest
first) that supports the call and does not defer it, saying once per reason why it passed one over (not for a
deferral: a choice, not a problem), and ends at ``torch``, which supports every call.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import warnings

from .. import envs

BACKENDS = envs.BACKENDS
_AUTO_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("vaekernels_backend", default=None)
_order_of: contextvars.ContextVar[str | None] = contextvars.ContextVar("vaekernels_order_of", default=None)
_warned: set[tuple[str, str]] = set()  # (backend, reason) pairs already reported


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run these arguments."""


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def requested_backend() -> str:
    return _requested.get() or envs.backend()


@contextlib.contextmanager
def use_backend(name: str, *, order_of: str | None = None):
    """Run the ops of this thread/context on backend ``name`` (``auto``, ``torch``, ``triton``, ``cpp``).
    ``order_of`` (with ``auto``): follow that device type's order whatever the tensors' device (the Triton
    backend's recording of what a CUDA run would launch, vaekernels.kernel_report, uses ``"cuda"``)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"use_backend: expected one of auto, {', '.join(BACKENDS)}; got {name!r}")
    if order_of is not None and (name != "auto" or order_of not in _AUTO_ORDER):
        raise ValueError(f"use_backend: order_of takes one of {', '.join(_AUTO_ORDER)} with 'auto'; got {order_of!r} "
                         f"with {name!r}")
    tokens = _requested.set(name), _order_of.set(order_of)
    try:
        yield
    finally:
        _requested.reset(tokens[0])
        _order_of.reset(tokens[1])


def reason(name: str, op: str, *args) -> str | None:
    """Why backend ``name`` cannot run ``op`` on ``args``, or None."""
    mod = _module(name)
    why = mod.supports(op, *args)
    if why is None and not callable(getattr(mod, op, None)):
        why = f"it has no {op} kernel"
    return why


def select(op: str, *args):
    """The backend module that runs ``op`` on ``args`` (the op's arguments in schema order)."""
    name = requested_backend()
    if name != "auto":
        why = reason(name, op, *args)
        if why:
            raise BackendUnavailable(f"backend {name!r} was requested but cannot run {op} here: {why}")
        return _module(name)
    x = args[0]
    for name in _AUTO_ORDER.get(_order_of.get() or x.device.type, ("torch",)):
        why = reason(name, op, *args)
        if why is None:
            defer = getattr(_module(name), "defer", None)
            if defer is None or defer(op, *args) is None:
                return _module(name)
            continue
        if (name, why) not in _warned:
            _warned.add((name, why))
            warnings.warn(f"vaekernels: backend {name!r} not used ({why}; first seen for {op}); falling back to "
                          f"the next one", RuntimeWarning, stacklevel=3)
    return _module("torch")


def backend_name(op: str, *args) -> str:
    """Name of the backend ``select`` would pick (for reports)."""
    return select(op, *args).__name__.rsplit(".", 1)[-1]


def memory_span(x):
    """The memory pool, around a whole encode or decode, of the backend that runs the convs on ``x``'s device
    and dtype (the cpp backend pools large CPU blocks across chunks, see csrc/cpu_pool.cpp); nothing for
    backends without one."""
    return getattr(select("causal_conv3d", x), "memory_pool", contextlib.nullcontext)()


def memory_path(x) -> str:
    """The name of the kernel path the convs on ``x``'s device and dtype take, as far as their memory goes: the
    memory estimate's coefficients are measured per path (``"default"`` where the backend names none)."""
    return getattr(select("causal_conv3d", x), "memory_path", lambda _: "default")(x)
