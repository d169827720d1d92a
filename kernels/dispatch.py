"""The one dispatch rule every op follows.

* CUDA tensors take the Triton kernels.
* CPU tensors take the eager PyTorch reference, unless ``TRITON_INTERPRET=1`` was set before
  triton was imported: then the Triton kernels run in triton's interpreter (that is how the tests
  exercise them on machines without a GPU).
* ``force_backend("reference" | "triton")`` overrides the rule inside a ``with`` block (tests and
  benchmarks compare the two paths through the same model code this way).
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

_BACKENDS = ("auto", "reference", "triton")
_state = threading.local()


def interpreter_enabled() -> bool:
    """True when triton's interpreter is on (``TRITON_INTERPRET=1`` in the environment)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def force_backend(backend: str):
    """Run the ops in the block on ``"reference"``, ``"triton"`` or ``"auto"`` (the rule above)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    previous = getattr(_state, "backend", "auto")
    _state.backend = backend
    try:
        yield
    finally:
        _state.backend = previous


def current_backend() -> str:
    return getattr(_state, "backend", "auto")


def use_triton(device: torch.device) -> bool:
    """Whether an op whose tensors live on ``device`` should run its Triton kernels."""
    backend = current_backend()
    if backend == "reference":
        return False
    if device.type == "cuda":
        return triton_available()
    if device.type == "cpu" and (backend == "triton" or interpreter_enabled()):
        if not interpreter_enabled():
            raise RuntimeError("force_backend('triton') on CPU tensors needs TRITON_INTERPRET=1 set "
                               "before triton is imported")
        return triton_available()
    return False
