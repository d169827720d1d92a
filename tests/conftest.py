"""Suite-wide set-up: Triton's interpreter on (before any kernel module is imported),
NaN-poisoned allocations around every test, so an unwritten output element fails its test, and,
with the interpreter on, every test inside :class:`segfuse.sanitizer.MemorySanitizer`, so a kernel
access outside the tensors passed to its launch fails it (``SEGFUSE_SANITIZE=0`` turns that off)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit decorates: set it first

import pytest  # noqa: E402
import torch  # noqa: E402

from segfuse.testing import nan_poisoned_allocations  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _poison_outputs():
    with nan_poisoned_allocations():
        yield


@pytest.fixture(autouse=True)
def _sanitize():
    from segfuse.kernels import interpreter_enabled

    if not interpreter_enabled() or os.environ.get("SEGFUSE_SANITIZE", "1").lower() in ("0", "false", "off", "no"):
        yield
        return
    from segfuse.sanitizer import MemorySanitizer  # lazy: triton is imported only when it enters

    with MemorySanitizer():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
