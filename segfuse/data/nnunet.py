"""Reader for datasets in the nnU-Net v2 raw layout, with strict validation.

Layout::

    DIR/dataset.json            {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...},
                                 "file_ending": ".nii.gz", "numTraining": N}
    DIR/imagesTr/CASE_0000.nii.gz   one file per channel (_0000, _0001, ...)
    DIR/labelsTr/CASE.nii.gz        integer label map, same shape and affine as the images
    DIR/imagesTs/CASE_0000.nii.gz   optional test images (labelsTs/ optional, not part of nnU-Net)

As in nnU-Net v2, ``labels`` may hold an ``"ignore"`` entry: the largest label value, one above the classes
``0..K-1``; its voxels are neither foreground nor background (no loss, no metric) and it is not a class
(:attr:`NnUNetDataset.ignore_label`). ``dataset.json`` may list the training cases itself,
``"dataset": {"CASE": {"images": ["imagesTr/CASE_0000.nii.gz", ...], "label": "labelsTr/CASE.nii.gz"}}``
(paths relative to ``DIR`` or absolute, ``$VARS`` expanded, as nnU-Net's
``get_filenames_of_train_images_and_targets``); then ``imagesTr/``/``labelsTr/`` are not read.

Arrays keep the NIfTI voxel order: image ``[C, X, Y, Z]`` float32, label ``[X, Y, Z]`` int16.
Every problem (missing channel, shape or affine mismatch, unknown label value, NaN/Inf, a file that
cannot be read) raises an error naming the case and the file; nothing is skipped silently. Label values
are checked in the file's own dtype before the cast to int16, so no value wraps into a valid class.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np

from .errors import DataError, MissingFileError

AFFINE_ATOL = 1e-3  # mm; affines of a case's files must agree to this tolerance


# key -> (expected Python type, how it is named in messages, example); keys not listed are not checked
_META_TYPES = {
    "channel_names": (dict, "an object", '{"0": "CT"}'),
    "labels": (dict, "an object", '{"background": 0, "liver": 1}'),
    "file_ending": (str, "a string", '".nii.gz"'),
    "numTraining": (int, "an integer", "10"),
    "dataset": (dict, "an object", '{"case1": {"images": ["imagesTr/case1_0000.nii.gz"], '
                                   '"label": "labelsTr/case1.nii.gz"}}'),
}


def _read_dataset_json(meta_path: str) -> dict:
    """dataset.json as a dict; invalid JSON, a missing key or a key of the wrong type is a
    :class:`DataError` naming the key, the expected type and the file."""
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object at the top level, got {type(meta).__name__}")
    for key in ("channel_names", "labels"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r}")
    for key, (typ, name, example) in _META_TYPES.items():
        if key in meta and (not isinstance(meta[key], typ) or isinstance(meta[key], bool)):
            raise DataError(f"{meta_path}: key {key!r} must be {name} (e.g. {example}), "
                            f"got {type(meta[key]).__name__} {meta[key]!r}")
    for k, v in meta["channel_names"].items():
        if not k.isdigit() or not isinstance(v, str):
            raise DataError(f"{meta_path}: key 'channel_names' must map channel numbers to names "
                            f'(e.g. {{"0": "CT"}}), got {k!r}: {v!r}')
    if not meta["channel_names"]:
        raise DataError(f"{meta_path}: key 'channel_names' is empty")
    return meta


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
        root: folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` (or a ``"dataset"`` key).
    Raises:
        MissingFileError (a FileNotFoundError): folder, dataset.json or imagesTr/labelsTr missing.
        DataError (a ValueError): dataset.json not valid JSON, without channel_names/labels, a key
            of the wrong type (named with the expected type and the file), region-based labels, label
            values not 0..K-1, an ``"ignore"`` label that is not K, or a malformed ``"dataset"`` entry.
    """

    def __init__(self, root: str):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise MissingFileError(f"dataset folder {self.root!r} does not exist")
        meta_path = os.path.join(self.root, "dataset.json")
        if not os.path.isfile(meta_path):
            raise MissingFileError(f"{meta_path} not found: not an nnU-Net raw dataset folder")
        meta = _read_dataset_json(meta_path)
        self.meta = meta
        self.channel_names: List[str] = [meta["channel_names"][k]
                                          for k in sorted(meta["channel_names"], key=int)]
        labels = meta["labels"]
        for name, value in labels.items():
            if not isinstance(value, int) or isinstance(value, bool):
                if name == "ignore":
                    raise DataError(f"{meta_path}: label 'ignore' has value {value!r}; the ignore label must be "
                                    "one integer (the largest label value)")
                raise DataError(f"{meta_path}: label {name!r} has value {value!r}; region-based "
                                 "(list) labels are not supported, give one integer per class")
        ignore = labels.get("ignore")
        classes = {n: v for n, v in labels.items() if n != "ignore"}
        self.labels: Dict[str, int] = dict(sorted(classes.items(), key=lambda kv: kv[1]))
        values = sorted(self.labels.values())
        if values != list(range(len(values))):
            raise DataError(f"{meta_path}: label values must be 0..K-1, got {values}"
                            + (" (besides 'ignore')" if ignore is not None else ""))
        if ignore is not None and ignore != len(values):
            raise DataError(f"{meta_path}: label 'ignore' must be the largest label value, {len(values)} (one "
                            f"above the classes 0..{len(values) - 1}), got {ignore}")
        #: value of the ``"ignore"`` label (voxels excluded from loss, sampling and metrics), or None
        self.ignore_label: Optional[int] = ignore
        self.file_ending: str = meta.get("file_ending", ".nii.gz")
        self.meta_path = meta_path
        #: ``{case_id: ([image files], label file)}`` from the ``"dataset"`` key, else None (imagesTr/labelsTr)
        self.listed_cases: Optional[Dict[str, Tuple[List[str], str]]] = None
        if "dataset" in meta:
            self.listed_cases = _read_dataset_key(meta["dataset"], meta_path, self.root, len(self.channel_names))
        else:
            for sub in ("imagesTr", "labelsTr"):
                if not os.path.isdir(os.path.join(self.root, sub)):
                    raise MissingFileError(f"{os.path.join(self.root, sub)} not found (and {meta_path} has no "
                                           "'dataset' key listing the cases)")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (the ignore label is not a class)."""
        return len(self.labels)

    @property
    def class_names(self) -> List[str]:
        """Class names by value, background first (without "ignore")."""
        return list(self.labels)

    @property
    def label_values(self) -> set:
        """Every value a label file may hold: the classes and the ignore label."""
        return set(self.labels.values()) | ({self.ignore_label} if self.ignore_label is not None else set())

    def case_ids(self, split: str = "Tr") -> List[str]:
        """Sorted case ids of ``imagesTr`` (``split="Tr"``) or ``imagesTs`` (``"Ts"``).

        Training cases are the files of ``labelsTr`` (or the keys of ``dataset.json``'s ``"dataset"``, sorted);
        every one must have all its channel files.
        """
        if split not in ("Tr", "Ts"):
            raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
        end = self.file_ending
        if split == "Tr" and self.listed_cases is not None:
            return sorted(self.listed_cases)
        if split == "Tr":
            folder = os.path.join(self.root, "labelsTr")
            ids = sorted(f[: -len(end)] for f in os.listdir(folder) if f.endswith(end))
            img_dir = os.path.join(self.root, "imagesTr")
            # images without a label are an error too
            img_ids = {f[: -len(end) - 5] for f in os.listdir(img_dir) if f.endswith(end)}
            orphans = sorted(img_ids - set(ids))
            if orphans:
                raise DataError(f"imagesTr has case {orphans[0]!r} but labelsTr has no "
                                 f"{orphans[0]}{end}")
            return ids
        folder = os.path.join(self.root, "imagesTs")
        if not os.path.isdir(folder):
            return []
        return sorted({f[: -len(end) - 5] for f in os.listdir(folder) if f.endswith(end)})

    def _listed(self, case_id: str) -> Tuple[List[str], str]:
        try:
            return self.listed_cases[case_id]
        except KeyError:
            raise DataError(f"case {case_id!r} is not listed in the 'dataset' key of {self.meta_path}") from None

    def image_files(self, case_id: str, split: str = "Tr") -> List[str]:
        if split == "Tr" and self.listed_cases is not None:
            return list(self._listed(case_id)[0])
        folder = os.path.join(self.root, "images" + split)
        return [os.path.join(folder, f"{case_id}_{c:04d}{self.file_ending}")
                for c in range(len(self.channel_names))]

    def label_file(self, case_id: str, split: str = "Tr") -> Optional[str]:
        """The label file of a case, None if there is none (a listed case's declared file in any case: loading
        it names the file when it is missing)."""
        if split == "Tr" and self.listed_cases is not None:
            return self._listed(case_id)[1]
        path = os.path.join(self.root, "labels" + split, case_id + self.file_ending)
        return path if os.path.isfile(path) else None

    def load_case(self, case_id: str, split: str = "Tr", with_label: bool = True) -> Case:
        """Load and validate one case; see :class:`Case` for shapes."""
        files = self.image_files(case_id, split)
        return load_case_files(case_id, files, self.label_file(case_id, split) if with_label else None,
                               valid_labels=self.label_values,
                               require_label=with_label and split == "Tr")


def _dataset_path(root: str, path: str) -> str:
    """A path of the ``"dataset"`` key: ``$VARS`` expanded, relative to the dataset folder unless absolute."""
    path = os.path.expandvars(path)
    return path if os.path.isabs(path) else os.path.abspath(os.path.join(root, path))


def _read_dataset_key(entries: dict, meta_path: str, root: str, num_channels: int
                      ) -> Dict[str, Tuple[List[str], str]]:
    """``{case_id: ([image file per channel], label file)}`` of ``dataset.json``'s ``"dataset"`` key; a malformed
    entry is a :class:`DataError` naming the case, what was expected and the file (missing files are reported
    when the case is loaded)."""
    if not entries:
        raise DataError(f"{meta_path}: key 'dataset' is empty; list the training cases or leave the key out "
                        "(imagesTr/labelsTr are read then)")
    out = {}
    for cid, entry in entries.items():
        if not cid or cid in (".", "..") or "/" in cid or os.sep in cid:
            raise DataError(f"{meta_path}: 'dataset' has case id {cid!r}; a case id names the prediction file "
                            "(CASE.nii.gz), so it must be a plain file name")
        example = (f'{{"images": ["imagesTr/{cid}_0000.nii.gz"], "label": "labelsTr/{cid}.nii.gz"}}')
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not (isinstance(images, list) and images and all(isinstance(f, str) for f in images)
                and isinstance(label, str)):
            raise DataError(f"{meta_path}: 'dataset' entry {cid!r} must be an object with a list of image files "
                            f"and a label file (e.g. {example}), got {entry!r}")
        if len(images) != num_channels:
            raise DataError(f"{meta_path}: 'dataset' entry {cid!r} lists {len(images)} image file(s), but "
                            f"channel_names has {num_channels} channel(s): one file per channel, in channel order")
        out[cid] = ([_dataset_path(root, f) for f in images], _dataset_path(root, label))
    return out


def _load(path: str, case_id: str):
    if not os.path.isfile(path):
        raise MissingFileError(f"case {case_id!r}: file {path} is missing")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:     # truncated gzip (EOFError), random bytes (ImageFileError), bad header ...
        raise DataError(f"case {case_id!r}: cannot read {path} (damaged or not a NIfTI file): "
                        f"{type(e).__name__}: {e}") from e
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"case {case_id!r}: {path} has shape {data.shape}; expected a 3D volume "
                         "(2D images are stored as X x Y x 1)")
    return img, data


_INT16 = np.iinfo(np.int16)


def _show(values, limit=10) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in values[:limit]]
    return str(vals)[:-1] + (f", ... ({len(values)} values)]" if len(values) > limit else "]")


def _check_label(ldata: np.ndarray, case_id: str, label_file: str, valid_labels: Optional[set]) -> np.ndarray:
    """Check label values in the file's own dtype (before any cast, so nothing wraps) and return them
    as int16. Non-integer or non-finite floats, values outside ``valid_labels`` (or outside int16 when
    no labels are given) raise a :class:`DataError` naming the file and the values."""
    if ldata.dtype.kind not in "biuf":
        raise DataError(f"case {case_id!r}: label {label_file} has dtype {ldata.dtype}; expected integers")
    values = np.unique(ldata)                                   # sorted, in the file's dtype
    if ldata.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise DataError(f"case {case_id!r}: label {label_file} contains NaN/Inf")
        frac = values[values != np.round(values)]
        if frac.size:
            raise DataError(f"case {case_id!r}: label {label_file} has non-integer values "
                            f"{_show(frac.tolist())}; labels must be whole numbers")
    vals = values.tolist()
    if valid_labels is not None:
        bad = [v for v in vals if v not in valid_labels]
        if bad:
            raise DataError(f"case {case_id!r}: label {label_file} has values {_show(bad)} not in "
                            f"dataset.json labels {sorted(valid_labels)}")
    else:
        bad = [v for v in vals if not _INT16.min <= v <= _INT16.max]
        if bad:
            raise DataError(f"case {case_id!r}: label {label_file} has values {_show(bad)} outside "
                            f"[{_INT16.min}, {_INT16.max}]")
    return ldata.astype(np.int16)


def load_case_files(case_id: str, image_files: List[str], label_file: Optional[str],
                    valid_labels: Optional[set] = None, require_label: bool = False) -> Case:
    """Load channel files (+ label) of one case and check they agree; see :class:`NnUNetDataset`."""
    first_img, first = _load(image_files[0], case_id)
    affine = first_img.affine
    channels = []
    for path in image_files:
        img, data = (first_img, first) if path == image_files[0] else _load(path, case_id)
        if data.shape != first.shape:
            raise DataError(f"case {case_id!r}: {path} has shape {data.shape}, but "
                             f"{image_files[0]} has {first.shape}")
        if not np.allclose(img.affine, affine, atol=AFFINE_ATOL):
            raise DataError(f"case {case_id!r}: affine of {path} differs from {image_files[0]}")
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise DataError(f"case {case_id!r}: {path} contains {int((~np.isfinite(data)).sum())} "
                             "NaN/Inf voxels")
        channels.append(data)
    label = None
    if label_file is None and require_label:
        raise MissingFileError(f"case {case_id!r}: label file is missing")
    if label_file is not None:
        limg, ldata = _load(label_file, case_id)
        if ldata.shape != first.shape:
            raise DataError(f"case {case_id!r}: label {label_file} has shape {ldata.shape}, image "
                             f"{image_files[0]} has {first.shape}")
        if not np.allclose(limg.affine, affine, atol=AFFINE_ATOL):
            raise DataError(f"case {case_id!r}: affine of label {label_file} differs from image "
                             f"{image_files[0]}")
        label = _check_label(ldata, case_id, label_file, valid_labels)
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
