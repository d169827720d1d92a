"""Per-class Dice and HD95 for integer label maps, with voxel spacing.

Conventions (per class c, computed on one case):

* Dice = 2|P∩G| / (|P| + |G|). Both empty -> NaN (class absent and correctly not predicted; left out
  of means, counted in ``n_empty``). Exactly one empty -> 0.
* HD95 (mm) = 95th percentile of the pooled symmetric surface distances (pred-surface -> gt-surface
  and gt-surface -> pred-surface, medpy's ``hd95`` convention), distances via scipy's Euclidean
  distance transform with ``sampling=spacing``. Both empty -> NaN. Exactly one empty -> the image
  diagonal in mm (the largest possible distance; BraTS-style penalty instead of an infinite value).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape (NaN if both empty)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) of two boolean masks; see module docstring."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * p.ndim))
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {spacing} does not match {p.ndim} dims")
    if not p.any() and not g.any():
        return float("nan")
    if not p.any() or not g.any():
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing))))
    # crop to the joint bounding box (+1 voxel) to keep distance transforms small
    idx = np.argwhere(p | g)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, p.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, g = p[sl], g[sl]
    sp, sg = _surface(p), _surface(g)
    d_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    dists = np.concatenate([d_to_g[sp], d_to_p[sg]])
    return float(np.percentile(dists, 95))


def per_class_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                      spacing: Optional[Sequence[float]] = None, include_hd95: bool = True
                      ) -> Dict[int, Dict[str, float]]:
    """``{class: {"dice": ..., "hd95": ...}}`` for classes 1..num_classes-1 of integer maps ``[*S]``."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {gt.shape}")
    out = {}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        out[c] = {"dice": dice_score(p, g)}
        if include_hd95:
            out[c]["hd95"] = hd95(p, g, spacing)
    return out


def nanmean(values) -> float:
    """Mean ignoring NaN; NaN if all are NaN (no warning)."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
