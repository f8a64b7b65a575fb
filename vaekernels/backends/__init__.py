"""Backend choice: one dispatcher for all ops.

A backend is a module exposing the op functions (``causal_conv3d``, ``rms_norm_silu``,
``spatial_attention``, ``upsample_conv2d``, each taking the op's arguments in schema order)
plus ``available() -> str | None`` and ``unsupported(x) -> str | None``, which give the reason
it cannot run (at all, or on this tensor's device/dtype) or None.

The choice, per call: an explicit request (``use_backend`` context, else the environment
variable ``VAEKERNELS_BACKEND``) must run or it raises; ``auto`` picks the fastest backend for
the device and falls back to ``torch``, warning once per reason.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings

BACKENDS = ("torch", "triton", "cpp")
_AUTO_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("vaekernels_backend", default=None)
_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run these arguments."""


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def requested_backend() -> str:
    name = _requested.get() or os.environ.get("VAEKERNELS_BACKEND", "auto") or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"VAEKERNELS_BACKEND / use_backend: expected one of auto, {', '.join(BACKENDS)}; got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops of this thread/context on backend ``name`` (``auto``, ``torch``, ``triton``, ``cpp``)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"use_backend: expected one of auto, {', '.join(BACKENDS)}; got {name!r}")
    token = _requested.set(name)
    try:
        yield
    finally:
        _requested.reset(token)


def _reason(name: str, x) -> str | None:
    mod = _module(name)
    return mod.available() or mod.unsupported(x)


def select(x):
    """The backend module that runs an op whose main input is ``x``."""
    name = requested_backend()
    if name != "auto":
        reason = _reason(name, x)
        if reason:
            raise BackendUnavailable(f"backend {name!r} was requested but cannot run here: {reason}")
        return _module(name)
    for name in _AUTO_ORDER.get(x.device.type, ("torch",)):
        reason = _reason(name, x)
        if reason is None:
            return _module(name)
        if name != "torch" and reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"vaekernels: backend {name!r} not used ({reason}); falling back to the next one",
                          RuntimeWarning, stacklevel=3)
    return _module("torch")


def backend_name(x) -> str:
    """Name of the backend ``select`` would pick for ``x`` (for reports)."""
    return select(x).__name__.rsplit(".", 1)[-1]
