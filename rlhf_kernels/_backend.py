"""Which implementation a public kernel function runs: the dispatch rules, in one place.

Backends:
    "auto"       Triton on CUDA tensors (when Triton imports), the memory-efficient torch
                 path everywhere else.
    "triton"     the Triton kernels. Needs CUDA tensors, or CPU tensors with the Triton
                 interpreter (TRITON_INTERPRET=1 set before `triton` was first imported).
    "torch"      the memory-efficient torch path (chunked log-probs, blocked GAE scan).
    "reference"  the plain torch twin from `rlhf_ds.rl` (materialises everything).

A call's `backend` argument wins when it names a backend; "auto" (the default of every
public function) defers to the process default, which `set_default_backend`, the
`use_backend` context manager or the environment variable RLHF_KERNELS_BACKEND set.
So a trainer switch `use_kernels: reference` is one `set_default_backend("reference")`.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "triton", "torch", "reference")
ENV_VAR = "RLHF_KERNELS_BACKEND"

try:  # Triton ships Linux x86-64 wheels only; everything here must import without it.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None
    HAS_TRITON = False


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return backend


_process_default = check_backend(os.environ.get(ENV_VAR, "auto") or "auto")
# The context manager layers over the process default; a ContextVar keeps threads apart.
_scoped_default: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "rlhf_kernels_backend", default=None)


def set_default_backend(backend: str) -> None:
    """Set the backend that every call made with `backend="auto"` uses from now on."""
    global _process_default
    _process_default = check_backend(backend)


def get_default_backend() -> str:
    scoped = _scoped_default.get()
    return _process_default if scoped is None else scoped


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """`with use_backend("reference"): ...` forces a backend inside the block only."""
    token = _scoped_default.set(check_backend(backend))
    try:
        yield
    finally:
        _scoped_default.reset(token)


def interpreter_active() -> bool:
    """True when Triton was imported in interpreter mode, so kernels can run on CPU tensors.

    Triton decides at import time (and at each `@triton.jit`) whether it interprets, so
    setting TRITON_INTERPRET later has no effect; we look at what actually happened.
    """
    if not HAS_TRITON:
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(tl.standard.sum, InterpretedFunction)


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend ("triton", "torch" or "reference") for tensors on `device`."""
    check_backend(backend)
    if backend == "auto":
        backend = get_default_backend()
    if backend == "auto":
        return "triton" if (device.type == "cuda" and HAS_TRITON) else "torch"
    if backend == "triton":
        if not HAS_TRITON:
            raise RuntimeError("backend='triton' needs the triton package; use 'torch' or 'auto'")
        if device.type != "cuda" and not interpreter_active():
            raise RuntimeError(
                f"backend='triton' got {device.type} tensors: Triton runs on CUDA, or on CPU only "
                "when TRITON_INTERPRET=1 was set before triton was imported")
    return backend
