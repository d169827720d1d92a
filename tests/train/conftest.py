import os
import subprocess
import sys

import pytest

from segfuse.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """5 training + 1 test phantom cases (48 x 48 x 16) in the nnU-Net layout."""
    root = tmp_path_factory.mktemp("traindata") / "tiny"
    return str(write_synthetic_dataset(str(root), num_train=5, num_test=1, shape=(48, 48, 16), seed=1))


def run_cli(*args, check=True, timeout=240):
    """``python -m segfuse ARGS`` in a subprocess with the eager CPU path (TRITON_INTERPRET=0)."""
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "segfuse", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"segfuse {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p
