"""From a dataset folder to training items and validation volumes: the train/validation split of a run
(training uses it, and evaluate ``--split val`` re-creates it from the run config, in the images' own grid:
:func:`held_out_cases`)."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Iterator, List, Optional, Sequence

import numpy as np

from .nnunet import Case, NnUNetDataset
from .preprocess import Preprocess
from .sampling import Volume, foreground, holdout_slices, slice_items

VAL_SPLITS = ("auto", "cases", "slices", "none")


def load_volumes(ds: NnUNetDataset, case_ids: Sequence[str], pre: Preprocess, split: str = "Tr"
                 ) -> List[Volume]:
    """The cases of ``ds`` (``split`` "Tr" or "Ts"), preprocessed; warns when no label has foreground."""
    vols = []
    for cid in case_ids:
        case = ds.load_case(cid, split)
        img, lab, sp = pre(case.image, case.label, case.spacing)
        vols.append(Volume(cid, img, lab, sp))
    if vols and all(v.label is not None and not foreground(v.label, ds.ignore_label).any() for v in vols):
        warnings.warn(f"{ds.root}: no foreground in any of the {len(vols)} label files (every voxel is 0"
                      f"{'' if ds.ignore_label is None else ' or ignore'}); "
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


def split_data(volumes: List[Volume], dims: int, split: str, every: int, ignore_label: Optional[int] = None):
    """Returns (train_items, val_volumes).

    train_items: (image, label) pairs — 2D slices ``[C, X, Y]``/``[X, Y]`` for dims 2, volumes for 3.
    val_volumes: :class:`Volume` list; for the ``slices`` split one volume per case holding its
    held-out slices (every ``every``-th slice with foreground, ``ignore_label`` voxels not counted as
    foreground), its z spacing multiplied by ``every``.
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
            tr, va = holdout_slices(v, every, ignore_label)
            items += slice_items([v], {v.case_id: tr})
            sp = tuple(v.spacing[:2]) + (v.spacing[2] * every,)
            val.append(Volume(v.case_id + "_heldout", np.ascontiguousarray(v.image[..., va]),
                              np.ascontiguousarray(v.label[..., va]), sp))
        return items, val
    items = slice_items(volumes) if dims == 2 else [(v.image, v.label) for v in volumes]
    return items, []


@dataclasses.dataclass
class HeldOutCase:
    """A validation case of a run, for scoring in the image's own grid (``segfuse evaluate --split val``).

    case: the raw :class:`Case` (input grid, affine, header, label ``[X, Y, Z]``); image: its preprocessed
    image ``[C, *S']`` (the network's input, ``S'`` the resampled grid when the run resamples); slices: the
    held-out slice indices of the preprocessed grid (``slices`` split), or None (``cases``: the whole case).
    """
    case: Case
    image: np.ndarray
    slices: Optional[List[int]]

    def scored(self) -> Optional[np.ndarray]:
        """The voxels of the input grid the split holds out: None for a whole case, else a boolean ``[X, Y, Z]``
        mask of the input slices whose nearest preprocessed slice is held out (:func:`slices_in_input_grid`)."""
        if self.slices is None:
            return None
        shape = self.case.image.shape[1:]
        along = slices_in_input_grid(self.slices, self.image.shape[-1], shape[-1])
        return np.broadcast_to(along, shape).copy()


def slices_in_input_grid(held: Sequence[int], n_pre: int, n_in: int) -> np.ndarray:
    """``[n_in]`` booleans: input slice ``z`` is held out when its nearest slice of the preprocessed grid
    (``n_pre`` slices over the same extent, as :func:`segfuse.data.preprocess.resize` maps them:
    ``floor((z + 0.5) * n_pre / n_in)``) is in ``held``. The identity when the grid was not resampled."""
    z = np.arange(n_in)
    nearest = np.minimum(np.floor((z + 0.5) * n_pre / n_in).astype(np.int64), n_pre - 1)
    return np.isin(nearest, np.asarray(list(held), np.int64))


def held_out_cases(ds: NnUNetDataset, pre: Preprocess, split: str, every: int) -> Iterator[HeldOutCase]:
    """The validation split of :func:`split_data` (``split`` "cases" or "slices", as resolved in training),
    case by case in the input grid: the held-out cases whole, or every case with the slices it holds out
    (chosen on the preprocessed grid exactly as in training; a case without held-out slices is skipped)."""
    ids = ds.case_ids("Tr")
    if split == "cases":
        for cid in val_case_ids(ids, every):
            case = ds.load_case(cid)
            image, _, _ = pre(case.image, None, case.spacing)
            yield HeldOutCase(case, image, None)
    elif split == "slices":
        for cid in ids:
            case = ds.load_case(cid)
            image, label, spacing = pre(case.image, case.label, case.spacing)
            _, held = holdout_slices(Volume(cid, image, label, spacing), every, ds.ignore_label)
            if held:
                yield HeldOutCase(case, image, held)
    else:
        raise ValueError(f"no validation split {split!r}: expected 'cases' or 'slices'")
