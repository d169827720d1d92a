"""Intensity normalisation per modality and resampling to a target spacing.

CT channels (``channel_names`` value "CT", case-insensitive): clip to a HU window and scale to [0, 1].
All other channels (MRI, T1, T2, FLAIR, ...): per-case z-score over the whole volume.
:class:`Preprocess` binds both to a run's settings (stored in the run config, reused by predict).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

DEFAULT_CT_WINDOW = (-175.0, 250.0)  # abdominal window used by the Synapse/BTCV literature


def normalize(image: np.ndarray, channel_names: Sequence[str],
              ct_window: Tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """image ``[C, *S]`` -> float32 ``[C, *S]``, each channel normalised by its modality."""
    if image.shape[0] != len(channel_names):
        raise ValueError(f"image has {image.shape[0]} channels but channel_names has {len(channel_names)}")
    lo, hi = float(ct_window[0]), float(ct_window[1])
    if not hi > lo:
        raise ValueError(f"ct_window must be (low, high) with high > low, got {ct_window}")
    out = np.empty(image.shape, np.float32)
    for c, name in enumerate(channel_names):
        x = image[c].astype(np.float32)
        if str(name).upper() == "CT":
            out[c] = (np.clip(x, lo, hi) - lo) / (hi - lo)
        else:
            out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
    return out


def resample(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
             target: Sequence[Optional[float]]):
    """Resample ``image [C, X, Y, Z]`` (cubic) and ``label [X, Y, Z]`` (nearest) to ``target`` spacing.

    A ``None`` entry in ``target`` keeps that axis. Returns (image, label, new_spacing).
    """
    if len(target) != 3:
        raise ValueError(f"target spacing needs 3 values, got {target}")
    tgt = [s if t is None else float(t) for s, t in zip(spacing, target)]
    shape = image.shape[1:]
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, tgt))
    if new_shape == tuple(shape):
        return image, label, tuple(spacing)
    img = np.stack([resize(ch, new_shape, order=3) for ch in image])
    lab = None if label is None else resize(label, new_shape, order=0)
    new_spacing = tuple(s * n / m for s, n, m in zip(spacing, shape, new_shape))
    return img, lab, new_spacing


def resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize one ``[X, Y, Z]`` array to exactly ``shape`` with scipy's spline zoom (grid_mode)."""
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [n / m for n, m in zip(shape, array.shape)]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True,
                        prefilter=order > 1).astype(array.dtype)


@dataclasses.dataclass
class Preprocess:
    """How raw images become network input: a run's channel names, CT window and target spacing (mm, or
    None to keep the data's). Stored in the run config; training, predict and evaluate apply the same."""
    channel_names: Sequence[str]
    ct_window: Tuple[float, float] = DEFAULT_CT_WINDOW
    spacing: Optional[Sequence[Optional[float]]] = None

    def __call__(self, image: np.ndarray, label: Optional[np.ndarray], spacing):
        """image ``[C, X, Y, Z]`` raw -> (normalised, resampled image, label, spacing)."""
        if self.spacing is not None:
            image, label, spacing = resample(image, label, spacing, self.spacing)
        return normalize(image, self.channel_names, self.ct_window), label, tuple(spacing)
