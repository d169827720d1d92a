"""From a dataset folder to training items and validation volumes: the train/validation split of a run
(training uses it, and evaluate ``--split val`` re-creates it from the run config)."""
from __future__ import annotations

import warnings
from typing import List, Sequence

import numpy as np

from .nnunet import NnUNetDataset
from .preprocess import Preprocess
from .sampling import Volume, holdout_slices, slice_items

VAL_SPLITS = ("auto", "cases", "slices", "none")


def load_volumes(ds: NnUNetDataset, case_ids: Sequence[str], pre: Preprocess, split: str = "Tr"
                 ) -> List[Volume]:
    """The cases of ``ds`` (``split`` "Tr" or "Ts"), preprocessed; warns when no label has foreground."""
    vols = []
    for cid in case_ids:
        case = ds.load_case(cid, split)
        img, lab, sp = pre(case.image, case.label, case.spacing)
        vols.append(Volume(cid, img, lab, sp))
    if vols and all(v.label is not None and not v.label.any() for v in vols):
        warnings.warn(f"{ds.root}: no foreground in any of the {len(vols)} label files (every voxel is 0); "
                      "there is no class to learn and validation Dice is meaningless (NaN or 0)", UserWarning,
                      stacklevel=2)
    return vols


def resolve_split(val_split: str, dims: int, num_cases: int, every: int) -> str:
    """``val_split`` (one of :data:`VAL_SPLITS`) with "auto" resolved: "cases", "slices" or "none"."""
    if val_split not in VAL_SPLITS:
        raise ValueError(f"--val-split must be one of {VAL_SPLITS}, got {val_split!r}")
    if val_split == "auto":
        if num_cases >= every:
            return "cases"
        return "slices" if dims == 2 else "none"
    if val_split == "slices" and dims != 2:
        raise ValueError("--val-split slices needs --dims 2")
    if val_split == "cases" and num_cases < 2:
        raise ValueError(f"--val-split cases needs at least 2 training cases, the data has {num_cases}")
    return val_split


def val_case_ids(case_ids: Sequence[str], every: int) -> List[str]:
    """Every ``every``-th case (starting at the middle of the first block) is held out."""
    held = list(case_ids)[every // 2::every]
    return held or [list(case_ids)[-1]]


def split_data(volumes: List[Volume], dims: int, split: str, every: int):
    """Returns (train_items, val_volumes).

    train_items: (image, label) pairs — 2D slices ``[C, X, Y]``/``[X, Y]`` for dims 2, volumes for 3.
    val_volumes: :class:`Volume` list; for the ``slices`` split one volume per case holding its
    held-out slices (every ``every``-th slice with foreground), its z spacing multiplied by ``every``.
    """
    if split == "cases":
        held = set(val_case_ids([v.case_id for v in volumes], every))
        train = [v for v in volumes if v.case_id not in held]
        val = [v for v in volumes if v.case_id in held]
        items = slice_items(train) if dims == 2 else [(v.image, v.label) for v in train]
        return items, val
    if split == "slices":
        items, val = [], []
        for v in volumes:
            tr, va = holdout_slices(v, every)
            items += slice_items([v], {v.case_id: tr})
            sp = tuple(v.spacing[:2]) + (v.spacing[2] * every,)
            val.append(Volume(v.case_id + "_heldout", np.ascontiguousarray(v.image[..., va]),
                              np.ascontiguousarray(v.label[..., va]), sp))
        return items, val
    items = slice_items(volumes) if dims == 2 else [(v.image, v.label) for v in volumes]
    return items, []
