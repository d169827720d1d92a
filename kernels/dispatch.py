"""The one dispatch rule every op follows.

* CUDA tensors take the Triton kernels.
* CPU tensors take the eager PyTorch reference, unless ``TRITON_INTERPRET=1`` was set before
  triton was imported: then the Triton kernels run in triton's interpreter (that is how the tests
  exercise them on machines without a GPU).
* ``force_backend("reference" | "triton")`` overrides the rule inside a ``with`` block (tests and
  benchmarks compare the two paths through the same model code this way).

Launch settings (tile sizes, warps, program counts) follow the device too: CUDA tensors get the GPU
settings, interpreted CPU tensors the interpreter's (where an op keeps any of its own: few, long
programs). ``force_launch_settings("gpu")`` makes interpreted launches use the GPU settings, so the
tests exercise on CPU every specialisation a GPU runs.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

_BACKENDS = ("auto", "reference", "triton")
_LAUNCH_SETTINGS = ("auto", "gpu", "interpreter")
DEFAULT_SM_COUNT = 132  # H100 SXM: what GPU launch settings assume for a CPU tensor
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
def _override(field: str, value: str, allowed: tuple, what: str):
    """Set the thread-local ``field`` to ``value`` inside the block."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    previous = getattr(_state, field, "auto")
    setattr(_state, field, value)
    try:
        yield
    finally:
        setattr(_state, field, previous)


def force_backend(backend: str):
    """Run the ops in the block on ``"reference"``, ``"triton"`` or ``"auto"`` (the rule above)."""
    return _override("backend", backend, _BACKENDS, "backend")


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


def backend_for(device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` by :func:`use_triton`: what an autograd Function decides once, in its
    forward, and passes to both of its registered ops."""
    return "triton" if use_triton(device) else "reference"


def force_launch_settings(kind: str):
    """Launch the kernels in the block with ``"gpu"`` or ``"interpreter"`` settings (``"auto"``: by device)."""
    return _override("launch", kind, _LAUNCH_SETTINGS, "launch settings")


def gpu_launch_settings(device: torch.device) -> bool:
    """Whether launchers should use their GPU tile sizes / program counts for tensors on ``device``."""
    kind = getattr(_state, "launch", "auto")
    if kind != "auto":
        return kind == "gpu"
    return device.type == "cuda"


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (``DEFAULT_SM_COUNT`` for a non-CUDA tensor)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SM_COUNT
