"""segfuse.data: nnU-Net raw-layout reader, preprocessing, train/validation split, embedded datasets, samplers.

``resolve_data(spec, cache_dir, dims, seed)`` turns ``--data DIR|synthetic|mni152`` into a folder.
"""
from __future__ import annotations

import os

from .errors import (CheckpointError, DataError, MissingFileError, RunFolderBusy,
                     RunFolderExists, UserError)
from .nnunet import Case, NnUNetDataset, load_case_files, save_nifti, write_dataset_json

EMBEDDED = ("synthetic", "mni152")


def default_cache_dir() -> str:
    """``$SEGFUSE_DATA`` or ``~/.cache/segfuse``: where embedded datasets are written."""
    return os.environ.get("SEGFUSE_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "segfuse")


def resolve_data(spec: str, cache_dir: str = None, dims: int = 3, seed: int = 0) -> str:
    """``spec``: a dataset folder, ``"synthetic"`` (phantoms; 3D volumes, used for 2D as slices) or
    ``"mni152"``. Embedded datasets are written once under ``cache_dir``; returns the folder."""
    cache_dir = cache_dir or default_cache_dir()
    if spec == "synthetic":
        from .synthetic import write_synthetic_dataset
        return write_synthetic_dataset(os.path.join(cache_dir, f"synthetic3d_v3_seed{seed}"), dims=3, seed=seed)
    if spec == "synthetic2d":
        from .synthetic import write_synthetic_dataset
        return write_synthetic_dataset(os.path.join(cache_dir, f"synthetic2d_v3_seed{seed}"), dims=2,
                                       seed=seed, num_train=64, num_test=16)
    if spec == "mni152":
        from .mni152 import write_mni152_dataset
        return write_mni152_dataset(os.path.join(cache_dir, "mni152"))
    if not os.path.isdir(spec):
        raise MissingFileError(f"--data {spec!r}: not a folder and not one of {EMBEDDED + ('synthetic2d',)}")
    return spec


__all__ = ["Case", "NnUNetDataset", "load_case_files", "save_nifti", "write_dataset_json",
           "resolve_data", "default_cache_dir", "EMBEDDED", "UserError", "DataError", "MissingFileError",
           "RunFolderExists", "RunFolderBusy", "CheckpointError"]
