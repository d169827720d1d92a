"""Reader for datasets in the nnU-Net v2 raw layout, with strict validation.

Layout::

    DIR/dataset.json            {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...},
                                 "file_ending": ".nii.gz", "numTraining": N}
    DIR/imagesTr/CASE_0000.nii.gz   one file per channel (_0000, _0001, ...)
    DIR/labelsTr/CASE.nii.gz        integer label map, same shape and affine as the images
    DIR/imagesTs/CASE_0000.nii.gz   optional test images (labelsTs/ optional, not part of nnU-Net)

Arrays keep the NIfTI voxel order: image ``[C, X, Y, Z]`` float32, label ``[X, Y, Z]`` int16.
Every problem (missing channel, shape or affine mismatch, unknown label value, NaN/Inf) raises an
error naming the case and the file; nothing is skipped silently.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Dict, List, Optional

import nibabel as nib
import numpy as np

AFFINE_ATOL = 1e-3  # mm; affines of a case's files must agree to this tolerance


@dataclasses.dataclass
class Case:
    """One case. image: ``[C, X, Y, Z]`` float32; label: ``[X, Y, Z]`` int16 or None.

    affine/header: from the first channel file (predictions are written back with them);
    spacing: voxel size in mm per axis ``(sx, sy, sz)``.
    """
    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    affine: np.ndarray
    header: nib.Nifti1Header
    spacing: tuple
    image_files: List[str]
    label_file: Optional[str]


class NnUNetDataset:
    """A dataset folder in the nnU-Net v2 raw layout.

    Args:
        root: folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
    Raises:
        FileNotFoundError: folder, dataset.json or imagesTr/labelsTr missing.
        ValueError: dataset.json without channel_names/labels, or region-based labels.
    """

    def __init__(self, root: str):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"dataset folder {self.root!r} does not exist")
        meta_path = os.path.join(self.root, "dataset.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: not an nnU-Net raw dataset folder")
        with open(meta_path) as f:
            meta = json.load(f)
        for key in ("channel_names", "labels"):
            if key not in meta:
                raise ValueError(f"{meta_path}: missing key {key!r}")
        self.meta = meta
        self.channel_names: List[str] = [meta["channel_names"][k]
                                          for k in sorted(meta["channel_names"], key=int)]
        labels = meta["labels"]
        for name, value in labels.items():
            if not isinstance(value, int):
                raise ValueError(f"{meta_path}: label {name!r} has value {value!r}; region-based "
                                 "(list) labels are not supported, give one integer per class")
        self.labels: Dict[str, int] = dict(sorted(labels.items(), key=lambda kv: kv[1]))
        values = sorted(self.labels.values())
        if values != list(range(len(values))):
            raise ValueError(f"{meta_path}: label values must be 0..K-1, got {values}")
        self.file_ending: str = meta.get("file_ending", ".nii.gz")
        for sub in ("imagesTr", "labelsTr"):
            if not os.path.isdir(os.path.join(self.root, sub)):
                raise FileNotFoundError(f"{os.path.join(self.root, sub)} not found")

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.labels)

    @property
    def class_names(self) -> List[str]:
        return list(self.labels)

    def case_ids(self, split: str = "Tr") -> List[str]:
        """Sorted case ids of ``imagesTr`` (``split="Tr"``) or ``imagesTs`` (``"Ts"``).

        Training cases are the files of ``labelsTr``; every one must have all its channel files.
        """
        if split not in ("Tr", "Ts"):
            raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
        end = self.file_ending
        if split == "Tr":
            folder = os.path.join(self.root, "labelsTr")
            ids = sorted(f[: -len(end)] for f in os.listdir(folder) if f.endswith(end))
            img_dir = os.path.join(self.root, "imagesTr")
            # images without a label are an error too
            img_ids = {f[: -len(end) - 5] for f in os.listdir(img_dir) if f.endswith(end)}
            orphans = sorted(img_ids - set(ids))
            if orphans:
                raise ValueError(f"imagesTr has case {orphans[0]!r} but labelsTr has no "
                                 f"{orphans[0]}{end}")
            return ids
        folder = os.path.join(self.root, "imagesTs")
        if not os.path.isdir(folder):
            return []
        return sorted({f[: -len(end) - 5] for f in os.listdir(folder) if f.endswith(end)})

    def image_files(self, case_id: str, split: str = "Tr") -> List[str]:
        folder = os.path.join(self.root, "images" + split)
        return [os.path.join(folder, f"{case_id}_{c:04d}{self.file_ending}")
                for c in range(len(self.channel_names))]

    def label_file(self, case_id: str, split: str = "Tr") -> Optional[str]:
        path = os.path.join(self.root, "labels" + split, case_id + self.file_ending)
        return path if os.path.isfile(path) else None

    def load_case(self, case_id: str, split: str = "Tr", with_label: bool = True) -> Case:
        """Load and validate one case; see :class:`Case` for shapes."""
        files = self.image_files(case_id, split)
        return load_case_files(case_id, files, self.label_file(case_id, split) if with_label else None,
                               valid_labels=set(self.labels.values()),
                               require_label=with_label and split == "Tr")


def _load(path: str, case_id: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"case {case_id!r}: file {path} is missing")
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ValueError(f"case {case_id!r}: {path} has shape {data.shape}; expected a 3D volume "
                         "(2D images are stored as X x Y x 1)")
    return img, data


def load_case_files(case_id: str, image_files: List[str], label_file: Optional[str],
                    valid_labels: Optional[set] = None, require_label: bool = False) -> Case:
    """Load channel files (+ label) of one case and check they agree; see :class:`NnUNetDataset`."""
    first_img, first = _load(image_files[0], case_id)
    affine = first_img.affine
    channels = []
    for path in image_files:
        img, data = (first_img, first) if path == image_files[0] else _load(path, case_id)
        if data.shape != first.shape:
            raise ValueError(f"case {case_id!r}: {path} has shape {data.shape}, but "
                             f"{image_files[0]} has {first.shape}")
        if not np.allclose(img.affine, affine, atol=AFFINE_ATOL):
            raise ValueError(f"case {case_id!r}: affine of {path} differs from {image_files[0]}")
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise ValueError(f"case {case_id!r}: {path} contains {int((~np.isfinite(data)).sum())} "
                             "NaN/Inf voxels")
        channels.append(data)
    label = None
    if label_file is None and require_label:
        raise FileNotFoundError(f"case {case_id!r}: label file is missing")
    if label_file is not None:
        limg, ldata = _load(label_file, case_id)
        if ldata.shape != first.shape:
            raise ValueError(f"case {case_id!r}: label {label_file} has shape {ldata.shape}, image "
                             f"{image_files[0]} has {first.shape}")
        if not np.allclose(limg.affine, affine, atol=AFFINE_ATOL):
            raise ValueError(f"case {case_id!r}: affine of label {label_file} differs from image "
                             f"{image_files[0]}")
        if np.issubdtype(ldata.dtype, np.floating):
            if not np.isfinite(ldata).all():
                raise ValueError(f"case {case_id!r}: label {label_file} contains NaN/Inf")
            if not np.all(ldata == np.round(ldata)):
                raise ValueError(f"case {case_id!r}: label {label_file} has non-integer values")
        label = ldata.astype(np.int16)
        if valid_labels is not None:
            present = set(np.unique(label).tolist())
            bad = sorted(present - valid_labels)
            if bad:
                raise ValueError(f"case {case_id!r}: label {label_file} has values {bad} not in "
                                 f"dataset.json labels {sorted(valid_labels)}")
    zooms = tuple(float(z) for z in first_img.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Case(case_id, np.stack(channels), label, affine, first_img.header.copy(), zooms,
                list(image_files), label_file)


def write_dataset_json(root: str, channel_names: List[str], labels: Dict[str, int], num_training: int,
                       file_ending: str = ".nii.gz", **extra) -> str:
    """Write ``root/dataset.json`` in the nnU-Net v2 format; returns its path."""
    meta = {"channel_names": {str(i): n for i, n in enumerate(channel_names)}, "labels": labels,
            "numTraining": num_training, "file_ending": file_ending, **extra}
    path = os.path.join(root, "dataset.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
    return path


def save_nifti(path: str, array: np.ndarray, affine: np.ndarray, header=None, dtype=None) -> None:
    """Write ``array`` ``[X, Y, Z]`` as NIfTI in the space of ``affine`` (+ ``header``), atomically."""
    arr = np.asarray(array if dtype is None else array.astype(dtype))
    hdr = None
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(arr.dtype)
        hdr.set_slope_inter(1, 0)
    img = nib.Nifti1Image(arr, affine, hdr)
    d, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".tmp-{os.getpid()}-{name}")
    nib.save(img, tmp)
    os.replace(tmp, path)


def publish_dataset(tmp: str, root: str) -> str:
    """Move a fully written dataset folder ``tmp`` to ``root`` in one rename (readers never see a half
    dataset); if another process published ``root`` first, keep theirs and drop ``tmp``."""
    if os.path.isfile(os.path.join(root, "dataset.json")):
        shutil.rmtree(tmp)
        return root
    if os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    os.replace(tmp, root)
    return root
