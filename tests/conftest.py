"""Suite-wide set-up: Triton's interpreter on (before any kernel module is imported) and
NaN-poisoned allocations around every test, so an unwritten output element fails its test."""
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
def _seed():
    torch.manual_seed(0)
    yield
