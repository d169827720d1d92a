"""Per-class Dice and HD95 for integer label maps, with voxel spacing.

Conventions (per class c, computed on one case):

* Dice = 2|P∩G| / (|P| + |G|). Both empty -> NaN (class absent and correctly not predicted; left out
  of means, counted in ``n_empty``). Exactly one empty -> 0.
* HD95 (mm) = 95th percentile of the pooled symmetric surface distances (pred-surface -> gt-surface
  and gt-surface -> pred-surface, medpy's ``hd95`` convention), distances via scipy's Euclidean
  distance transform with ``sampling=spacing``. Both empty -> NaN. Exactly one empty -> the image
  diagonal in mm (the largest possible distance; BraTS-style penalty instead of an infinite value).
  ``convention="monai"`` gives MONAI's ``compute_hausdorff_distance(percentile=95)`` instead: the larger of
  the two one-way 95th percentiles, and NaN when exactly one mask is empty.
* ``mask`` (optional, every function): the voxels to score. A voxel outside it (nnU-Net's ignore label in
  the reference, or a part of the volume that is not held out) is neither foreground nor background for
  any class, in prediction and reference alike: it is left out of every count, and it makes no surface
  (a voxel is on a mask's surface only where a scored neighbour is outside the mask); distances are still
  measured in the whole grid.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage


def _scored(p: np.ndarray, g: np.ndarray, mask) -> tuple:
    """``(p, g, mask)`` with voxels outside ``mask`` dropped from both masks (mask None: all scored)."""
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    if mask is None:
        return p, g, None
    m = np.asarray(mask, bool)
    if m.shape != p.shape:
        raise ValueError(f"mask shape {m.shape} != pred shape {p.shape}")
    return p & m, g & m, m


def dice_score(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Dice of two boolean masks of the same shape (NaN if both empty), over the voxels of ``mask``
    (default all)."""
    p, g, _ = _scored(np.asarray(pred, bool), np.asarray(gt, bool), mask)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def _surface(mask: np.ndarray, unscored: Optional[np.ndarray] = None) -> np.ndarray:
    """Voxels of ``mask`` with a 6-/4-connected neighbour outside it (the image border counts as outside);
    ``unscored`` voxels count as inside, so they make no surface."""
    grown = mask if unscored is None else mask | unscored
    return mask & ~ndimage.binary_erosion(grown, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


HD95_CONVENTIONS = ("medpy", "monai")


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None,
         mask: Optional[np.ndarray] = None, convention: str = "medpy") -> float:
    """95th-percentile symmetric Hausdorff distance (mm) of two boolean masks over the voxels of ``mask``
    (default all); ``convention`` "medpy" (pooled directions, one empty mask: the diagonal) or "monai" (the
    larger one-way percentile, one empty mask: NaN); see module docstring."""
    if convention not in HD95_CONVENTIONS:
        raise ValueError(f"convention must be one of {HD95_CONVENTIONS}, got {convention!r}")
    p, g, m = _scored(np.asarray(pred, bool), np.asarray(gt, bool), mask)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * p.ndim))
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {spacing} does not match {p.ndim} dims")
    if not p.any() and not g.any():
        return float("nan")
    if not p.any() or not g.any():
        if convention == "monai":
            return float("nan")
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing))))
    # crop to the joint bounding box (+1 voxel) to keep distance transforms small
    idx = np.argwhere(p | g)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, p.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, g = p[sl], g[sl]
    unscored = None if m is None else ~m[sl]
    sp, sg = _surface(p, unscored), _surface(g, unscored)
    # a mask wholly enclosed by unscored voxels has no scored border: fall back to its plain surface
    sp, sg = (sp if sp.any() else _surface(p)), (sg if sg.any() else _surface(g))
    d_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    if convention == "monai":
        return float(max(np.percentile(d_to_g[sp], 95), np.percentile(d_to_p[sg], 95)))
    dists = np.concatenate([d_to_g[sp], d_to_p[sg]])
    return float(np.percentile(dists, 95))


def per_class_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                      spacing: Optional[Sequence[float]] = None, include_hd95: bool = True,
                      mask: Optional[np.ndarray] = None, hd95_convention: str = "medpy") -> Dict[int, Dict[str, float]]:
    """``{class: {"dice": ..., "hd95": ...}}`` for classes 1..num_classes-1 of integer maps ``[*S]``, over the
    voxels of ``mask`` (default all; e.g. ``gt != ignore_label``); ``hd95_convention``: see :func:`hd95`."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {gt.shape}")
    if mask is not None and np.shape(mask) != pred.shape:
        raise ValueError(f"mask shape {np.shape(mask)} != label shape {gt.shape}")
    out = {}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        out[c] = {"dice": dice_score(p, g, mask)}
        if include_hd95:
            out[c]["hd95"] = hd95(p, g, spacing, mask, hd95_convention)
    return out


def scored_mask(label: np.ndarray, ignore_label: Optional[int] = None,
                region: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The voxels to score in a reference ``label``: not ``ignore_label``, and inside ``region`` when given
    (None when every voxel counts)."""
    mask = None if ignore_label is None else np.asarray(label) != ignore_label
    if region is not None:
        mask = np.asarray(region, bool) if mask is None else mask & region
    return mask


def nanmean(values) -> float:
    """Mean ignoring NaN; NaN if all are NaN (no warning)."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
