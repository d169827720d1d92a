import shutil

import pytest

from segfuse.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """4 training + 1 test phantom cases, 48 x 48 x 16, nnU-Net layout."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return str(write_synthetic_dataset(str(root), num_train=4, num_test=1, shape=(48, 48, 16), seed=3))


@pytest.fixture
def copy(tiny_dataset, tmp_path):
    """A private, writable copy of the tiny dataset (for tests that break it)."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    return str(dst)
