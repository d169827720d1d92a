"""Training/validation items and the patch dataset.

An *item* is what a patch is cut from: a 2D slice (``image [C, X, Y]``, ``label [X, Y]``) of a 3D
volume for 2D training, or a whole case (``[C, X, Y, Z]`` / ``[X, Y, Z]``) for 3D training.
Slices are taken along the last voxel axis (axial for the usual RAS/LPS volumes).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .augment import AugmentConfig, augment


@dataclasses.dataclass
class Volume:
    """A preprocessed case: image ``[C, X, Y, Z]`` float32 (normalised), label ``[X, Y, Z]`` int16."""
    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    spacing: tuple


def slice_items(volumes: Sequence[Volume], slices: Optional[Dict[str, List[int]]] = None):
    """2D items: list of (image ``[C, X, Y]``, label ``[X, Y]``) views; ``slices`` restricts per case."""
    items = []
    for v in volumes:
        idx = range(v.image.shape[-1]) if slices is None else slices[v.case_id]
        items += [(v.image[..., z], v.label[..., z]) for z in idx]
    return items


def foreground(label: np.ndarray, ignore_label: Optional[int] = None) -> np.ndarray:
    """Boolean mask of the foreground voxels of ``label``: not background (0) and not the ignore label."""
    fg = label != 0
    if ignore_label is not None:
        fg &= label != ignore_label
    return fg


def holdout_slices(volume: Volume, every: int = 5, ignore_label: Optional[int] = None
                   ) -> Tuple[List[int], List[int]]:
    """Split the slices of one volume: every ``every``-th slice that holds foreground is held out.

    Returns (train_slices, val_slices). Slices without foreground (voxels of the ignore label are not
    foreground) stay in training.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    fg_mask = foreground(volume.label, ignore_label)
    fg = [z for z in range(volume.label.shape[-1]) if fg_mask[..., z].any()]
    val = fg[every // 2::every]
    held = set(val)
    return [z for z in range(volume.label.shape[-1]) if z not in held], val


class PatchDataset(torch.utils.data.Dataset):
    """Random patches: ``dataset[i] -> (image [C, *patch] float32, label [*patch] int64)``.

    Index ``i`` of epoch ``e`` is drawn from ``np.random.default_rng([seed, e, i])``, so a sample is
    the same whichever process or worker draws it (resume and DistributedSampler stay deterministic).
    With probability ``fg_prob`` the patch is centred on a voxel of a random foreground class (never on a
    voxel of ``ignore_label``, which is not a class).

    Args:
        items: list of (image ``[C, *S]``, label ``[*S]``) with ``len(S) == len(patch_size)``.
        patch_size: spatial patch size; images smaller than it are padded (image with its minimum,
            label with 0).
        length: samples per epoch.
        ignore_label: label value whose voxels are not foreground (dataset.json's "ignore"), or None.
    """

    def __init__(self, items, patch_size: Sequence[int], length: int, seed: int = 0,
                 fg_prob: float = 0.33, aug: Optional[AugmentConfig] = None, max_coords: int = 2000,
                 ignore_label: Optional[int] = None):
        if not items:
            raise ValueError("PatchDataset needs at least one item")
        self.items = items
        self.patch = tuple(int(p) for p in patch_size)
        if len(self.patch) != items[0][1].ndim:
            raise ValueError(f"patch_size {self.patch} does not match item dims {items[0][1].ndim}")
        self.length, self.seed, self.fg_prob = int(length), int(seed), float(fg_prob)
        self.aug = aug or AugmentConfig.preset("none")
        self.epoch = 0
        rng = np.random.default_rng([seed, 12345])
        coords: Dict[int, List[np.ndarray]] = {}
        for n, (_, lab) in enumerate(items):
            for c in np.unique(lab):
                if c == 0 or (ignore_label is not None and c == ignore_label):
                    continue
                pts = np.argwhere(lab == c)
                if len(pts) > max_coords:
                    pts = pts[rng.choice(len(pts), max_coords, replace=False)]
                coords.setdefault(int(c), []).append(
                    np.concatenate([np.full((len(pts), 1), n), pts], axis=1))
        self.fg_coords = {c: np.concatenate(v) for c, v in sorted(coords.items())}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        centre = None
        if self.fg_coords and rng.random() < self.fg_prob:
            cls = list(self.fg_coords)[int(rng.integers(len(self.fg_coords)))]
            pts = self.fg_coords[cls]
            row = pts[int(rng.integers(len(pts)))]
            n, centre = int(row[0]), row[1:]
        else:
            n = int(rng.integers(len(self.items)))
        image, label = self.items[n]
        img, lab = crop_patch(image, label, self.patch, rng, centre)
        img, lab = augment(img, lab, rng, self.aug)
        return torch.from_numpy(img), torch.from_numpy(lab.astype(np.int64))


def crop_patch(image: np.ndarray, label: np.ndarray, patch: Sequence[int], rng, centre=None):
    """Cut ``patch`` from ``image [C, *S]``/``label [*S]``, padding where S < patch; random origin, or
    one that keeps ``centre`` (voxel coordinates) inside the patch, near its middle."""
    shape = label.shape
    pad = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for p, s in zip(patch, shape)]
    if any(a or b for a, b in pad):
        image = np.pad(image, [(0, 0)] + pad, mode="constant", constant_values=float(image.min()))
        label = np.pad(label, pad, mode="constant")
        if centre is not None:
            centre = np.asarray(centre) + [a for a, _ in pad]
        shape = label.shape
    origin = []
    for d, (p, s) in enumerate(zip(patch, shape)):
        hi = s - p
        if centre is None:
            o = int(rng.integers(0, hi + 1))
        else:
            o = int(centre[d]) - p // 2 + int(rng.integers(-(p // 4), p // 4 + 1))
            o = min(max(o, 0), hi)
        origin.append(o)
    sl = tuple(slice(o, o + p) for o, p in zip(origin, patch))
    return image[(slice(None),) + sl], label[sl]
