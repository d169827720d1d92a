"""``synthetic``: multi-organ phantom volumes written in the nnU-Net raw layout.

Each case: a body (soft-tissue ellipse/ellipsoid in air) holding non-overlapping smooth organs of
different sizes (two large, two medium, one small), each with its own mean HU, smooth texture,
plus a multiplicative bias field and Gaussian noise. Images are CT-like (channel "CT", HU), so the
default CT window normalisation applies. Deterministic: case ``i`` of seed ``s`` depends on (s, i) only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .nnunet import publish_dataset, save_nifti, write_dataset_json

# name: (relative radius range (fraction of body size), mean HU)
ORGANS: Dict[str, Tuple[Tuple[float, float], float]] = {
    "liver": ((0.46, 0.54), 60.0),
    "spleen": ((0.30, 0.36), 105.0),
    "kidney": ((0.22, 0.26), 170.0),
    "stomach": ((0.24, 0.30), -5.0),
    "gland": ((0.09, 0.12), 135.0),   # small structure
}
DEFAULT_SHAPE_3D = (64, 64, 48)
DEFAULT_SHAPE_2D = (128, 128)
DEFAULT_SPACING = (1.5, 1.5, 2.5)


def _smooth_noise(rng, shape, sigma):
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    n = n - n.mean()
    return n / max(float(n.std()), 1e-8)


def make_case(shape: Sequence[int], seed: int, index: int, spacing=DEFAULT_SPACING):
    """One phantom. shape: ``(X, Y)`` or ``(X, Y, Z)``. Returns (image HU ``[X,Y,Z]`` float32,
    label ``[X,Y,Z]`` uint8 with values 0..len(ORGANS)); 2D shapes come back with Z = 1."""
    rng = np.random.default_rng([seed, index])
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries, got {shape}")
    sp = np.asarray(spacing[:nd], np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    mm = grid * sp.reshape((nd,) + (1,) * nd)               # voxel centres in mm
    extent = np.asarray(shape, np.float32) * sp
    centre = extent / 2 + rng.uniform(-0.03, 0.03, nd) * extent
    body_r = extent * rng.uniform(0.40, 0.46, nd)
    warp = 0.06 * _smooth_noise(rng, shape, sigma=max(shape) / 6)
    body = (((mm - centre.reshape((nd,) + (1,) * nd)) / body_r.reshape((nd,) + (1,) * nd)) ** 2).sum(0) \
        + warp < 1.0
    label = np.zeros(shape, np.uint8)
    image = np.full(shape, -1000.0, np.float32)
    image[body] = -90.0 + 15.0 * _smooth_noise(rng, shape, 2.0)[body]   # fat/soft tissue
    scale = float(body_r.min())
    inner = ndimage.binary_erosion(body, iterations=2)
    for k, (name, ((rlo, rhi), hu)) in enumerate(ORGANS.items(), start=1):
        # centre drawn among free voxels far enough from the body wall and the organs placed so far
        free = inner & ~ndimage.binary_dilation(label > 0, iterations=2)
        dist = ndimage.distance_transform_edt(free, sampling=sp)
        radii = np.maximum(scale * rng.uniform(rlo, rhi, nd), 2.0 * sp)   # at least ~4 voxels across
        if dist.max() < 0.8 * radii.max():
            radii = radii * dist.max() / (0.8 * radii.max())
        cand = np.flatnonzero(dist.ravel() >= 0.8 * radii.max())
        if cand.size == 0:
            raise RuntimeError(f"synthetic case {index} (seed {seed}): no room for organ {name!r}")
        for _attempt in range(20):
            c = mm.reshape(nd, -1)[:, rng.choice(cand)]
            rot = np.linalg.qr(rng.standard_normal((nd, nd)))[0]
            d = np.tensordot(rot, mm - c.reshape((nd,) + (1,) * nd), axes=1)
            f = ((d / radii.reshape((nd,) + (1,) * nd)) ** 2).sum(0)
            f = f + 0.25 * _smooth_noise(rng, shape, sigma=max(2.0, float(radii.min() / sp.max()) / 1.5))
            organ = (f < 1.0) & free
            if organ.sum() >= 4:
                break
        else:
            raise RuntimeError(f"synthetic case {index} (seed {seed}): organ {name!r} came out empty")
        label[organ] = k
        tex = 12.0 * _smooth_noise(rng, shape, 1.5)
        image[organ] = hu + rng.uniform(-10, 10) + tex[organ]
    bias = np.exp(0.02 * _smooth_noise(rng, shape, sigma=max(shape) / 3))
    image = np.where(body, (image + 1000.0) * bias - 1000.0, image)
    image = image + rng.normal(0.0, 18.0, shape).astype(np.float32)
    if nd == 2:
        image, label = image[..., None], label[..., None]
    return image.astype(np.float32), label


def write_synthetic_dataset(root: str, num_train: int = 16, num_test: int = 4, dims: int = 3,
                            shape: Optional[Sequence[int]] = None, seed: int = 0,
                            spacing=DEFAULT_SPACING) -> str:
    """Write a phantom dataset to ``root`` (nnU-Net layout, plus ``labelsTs/``); returns ``root``.

    If ``root`` already holds a complete dataset it is left as is. Writing goes to a temporary
    folder renamed into place, so an interrupted run never leaves a half-written dataset.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    shape = tuple(shape or (DEFAULT_SHAPE_3D if dims == 3 else DEFAULT_SHAPE_2D))
    if len(shape) != dims:
        raise ValueError(f"shape {shape} does not match dims={dims}")
    if os.path.isfile(os.path.join(root, "dataset.json")):
        return root
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        sp3 = tuple(spacing[:dims]) + (1.0,) * (3 - dims)
        affine = np.diag(list(sp3) + [1.0])
        for i in range(num_train + num_test):
            img, lab = make_case(shape, seed, i, spacing=sp3)
            split = "Tr" if i < num_train else "Ts"
            cid = f"phantom_{i:03d}"
            save_nifti(os.path.join(tmp, "images" + split, f"{cid}_0000.nii.gz"), img, affine)
            save_nifti(os.path.join(tmp, "labels" + split, f"{cid}.nii.gz"), lab, affine)
        labels = {"background": 0, **{n: k for k, n in enumerate(ORGANS, start=1)}}
        write_dataset_json(tmp, ["CT"], labels, num_train, name=f"synthetic{dims}d_seed{seed}",
                           description="segfuse multi-organ phantoms (deterministic by seed)")
        publish_dataset(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
