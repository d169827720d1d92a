"""``mni152``: the MNI ICBM152 2009a (nonlinear symmetric) T1 template with grey/white-matter labels.

Read from the files the ``nilearn`` wheel ships (``pip install nilearn``; no network access).
Labels: argmax over (background/CSF = 1 - p_gm - p_wm, p_gm, p_wm) of the template's tissue
probability maps -> 0 background, 1 grey matter, 2 white matter. Written as one training case in the
nnU-Net raw layout, 1 mm isotropic, cropped to the brain's bounding box + 2 voxels
(149 x 185 x 157 of the template's 197 x 233 x 189 voxels; the affine is shifted accordingly, so the
volume stays in MNI space).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import nibabel as nib
import numpy as np

from .nnunet import publish_dataset, save_nifti, write_dataset_json

FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
CASE_ID = "mni152_2009a"


def nilearn_data_dir() -> str:
    """Folder of the template files inside the installed nilearn wheel."""
    try:
        import nilearn
    except ImportError as e:
        raise ImportError("the 'mni152' dataset reads the template shipped with nilearn: "
                          "pip install nilearn (or pip install segfuse[mni152])") from e
    folder = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    for f in FILES.values():
        if not os.path.isfile(os.path.join(folder, f)):
            raise FileNotFoundError(f"nilearn does not ship {f} in {folder}; nilearn version too old?")
    return folder


def mni152_arrays():
    """Returns (t1 ``[X,Y,Z]`` float32, label ``[X,Y,Z]`` uint8, affine)."""
    folder = nilearn_data_dir()
    imgs = {k: nib.load(os.path.join(folder, f)) for k, f in FILES.items()}
    t1 = np.asanyarray(imgs["t1"].dataobj).astype(np.float32)
    gm = np.asanyarray(imgs["gm"].dataobj).astype(np.float32) / 255.0
    wm = np.asanyarray(imgs["wm"].dataobj).astype(np.float32) / 255.0
    bg = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([bg, gm, wm]), axis=0).astype(np.uint8)
    nz = np.argwhere((label > 0) | (t1 > 0))
    lo = np.maximum(nz.min(0) - 2, 0)
    hi = np.minimum(nz.max(0) + 3, label.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = imgs["t1"].affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    return np.ascontiguousarray(t1[sl]), np.ascontiguousarray(label[sl]), affine


def write_mni152_dataset(root: str) -> str:
    """Write the template as an nnU-Net raw dataset at ``root`` (skipped if already there)."""
    if os.path.isfile(os.path.join(root, "dataset.json")):
        return root
    t1, label, affine = mni152_arrays()
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".mni152-", dir=parent)
    try:
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(os.path.join(tmp, sub))
        save_nifti(os.path.join(tmp, "imagesTr", f"{CASE_ID}_0000.nii.gz"), t1, affine)
        save_nifti(os.path.join(tmp, "labelsTr", f"{CASE_ID}.nii.gz"), label, affine)
        write_dataset_json(tmp, ["T1"], {"background": 0, "grey_matter": 1, "white_matter": 2}, 1,
                           name="mni152", description="MNI ICBM152 2009a sym T1 + GM/WM labels "
                           "(argmax of tissue probability maps), from the nilearn wheel")
        publish_dataset(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
