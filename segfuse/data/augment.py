"""Patch augmentation with numpy/scipy: flips, in-plane rot90, small rotation + zoom, intensity.

All functions take ``image [C, *P]`` (P = 2 or 3 spatial axes, first two in-plane) and
``label [*P]`` and return arrays of the same shapes.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage


@dataclasses.dataclass
class AugmentConfig:
    """Probabilities and ranges. ``preset()`` gives the named settings used by ``--augment``."""
    p_flip: float = 0.5           # per spatial axis
    flip_axes: tuple = None       # None = all spatial axes
    p_rot90: float = 0.0          # in-plane (axes 0, 1), only for square in-plane patches
    p_rotate: float = 0.0         # small in-plane rotation
    max_degrees: float = 15.0
    p_zoom: float = 0.0
    zoom_range: tuple = (0.85, 1.2)
    p_intensity: float = 0.0      # scale x ~ U(0.9, 1.1) and shift ~ U(-0.1, 0.1) (normalised units)

    @staticmethod
    def preset(name: str) -> "AugmentConfig":
        if name == "none":
            return AugmentConfig(p_flip=0.0)
        if name == "flips":
            return AugmentConfig()
        if name == "default":
            return AugmentConfig(p_rot90=0.5, p_rotate=0.2, p_zoom=0.2, p_intensity=0.15)
        raise ValueError(f"augment preset must be 'none', 'flips' or 'default', got {name!r}")


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig):
    """Random augmentation of one patch (see module docstring for shapes)."""
    nd = label.ndim
    angle = rng.uniform(-cfg.max_degrees, cfg.max_degrees) if rng.random() < cfg.p_rotate else 0.0
    zoom = rng.uniform(*cfg.zoom_range) if rng.random() < cfg.p_zoom else 1.0
    if angle != 0.0 or zoom != 1.0:
        image, label = _rotate_zoom(image, label, math.radians(angle), zoom)
    if cfg.p_rot90 > 0 and label.shape[0] == label.shape[1] and rng.random() < cfg.p_rot90:
        k = int(rng.integers(1, 4))
        image = np.rot90(image, k, axes=(1, 2))
        label = np.rot90(label, k, axes=(0, 1))
    for ax in (cfg.flip_axes if cfg.flip_axes is not None else range(nd)):
        if rng.random() < cfg.p_flip:
            image = np.flip(image, axis=ax + 1)
            label = np.flip(label, axis=ax)
    if rng.random() < cfg.p_intensity:
        image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def _rotate_zoom(image, label, theta, zoom):
    """In-plane rotation by ``theta`` and isotropic zoom about the patch centre (one resampling)."""
    nd = label.ndim
    m = np.eye(nd)
    c, s = math.cos(theta), math.sin(theta)
    m[:2, :2] = [[c, -s], [s, c]]
    m = m / zoom                                   # output -> input coordinates
    centre = (np.asarray(label.shape) - 1) / 2.0
    offset = centre - m @ centre
    img = np.stack([ndimage.affine_transform(ch, m, offset, order=1, mode="nearest") for ch in image])
    lab = ndimage.affine_transform(label, m, offset, order=0, mode="constant", cval=0)
    return img, lab
