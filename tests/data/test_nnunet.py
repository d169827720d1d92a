"""Reader of the nnU-Net raw layout: round trip, determinism, and every bad-data error names its case."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from segfuse.data import NnUNetDataset, resolve_data
from segfuse.data.synthetic import ORGANS, make_case, write_synthetic_dataset


def test_synthetic_layout_and_reader(tiny_dataset):
    ds = NnUNetDataset(tiny_dataset)
    assert ds.channel_names == ["CT"] and ds.num_classes == len(ORGANS) + 1
    assert ds.case_ids("Tr") == [f"phantom_{i:03d}" for i in range(4)]
    assert ds.case_ids("Ts") == ["phantom_004"]
    case = ds.load_case("phantom_001")
    assert case.image.shape == (1, 48, 48, 16) and case.image.dtype == np.float32
    assert case.label.shape == (48, 48, 16)
    assert case.spacing == pytest.approx((1.5, 1.5, 2.5))
    assert set(np.unique(case.label)) == set(range(len(ORGANS) + 1))  # every organ, incl. the small one
    assert np.allclose(case.affine, np.diag([1.5, 1.5, 2.5, 1.0]))


def test_synthetic_deterministic_by_seed():
    a, la = make_case((32, 32, 8), seed=5, index=2)
    b, lb = make_case((32, 32, 8), seed=5, index=2)
    c, _ = make_case((32, 32, 8), seed=6, index=2)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    img2d, lab2d = make_case((40, 40), seed=0, index=0)
    assert img2d.shape == (40, 40, 1) and lab2d.max() == len(ORGANS)


def _rewrite(path, fn):
    img = nib.load(path)
    data, affine = fn(np.asanyarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def test_shape_mismatch_names_case_and_file(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_002.nii.gz")
    _rewrite(lab, lambda d, a: (d[:, :, :8], a))
    with pytest.raises(ValueError, match=r"phantom_002.*labelsTr/phantom_002\.nii\.gz.*shape"):
        NnUNetDataset(copy).load_case("phantom_002")


def test_affine_mismatch(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_000.nii.gz")
    _rewrite(lab, lambda d, a: (d, a + np.diag([0.5, 0, 0, 0])))
    with pytest.raises(ValueError, match=r"phantom_000.*affine.*phantom_000\.nii\.gz"):
        NnUNetDataset(copy).load_case("phantom_000")


def test_missing_channel_file(copy):
    os.remove(os.path.join(copy, "imagesTr", "phantom_001_0000.nii.gz"))
    with pytest.raises(FileNotFoundError, match=r"phantom_001.*phantom_001_0000\.nii\.gz"):
        NnUNetDataset(copy).load_case("phantom_001")


def test_second_channel_missing(copy):
    meta = json.load(open(os.path.join(copy, "dataset.json")))
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    json.dump(meta, open(os.path.join(copy, "dataset.json"), "w"))
    with pytest.raises(FileNotFoundError, match=r"phantom_000.*phantom_000_0001\.nii\.gz"):
        NnUNetDataset(copy).load_case("phantom_000")


def test_label_outside_dataset_json(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_003.nii.gz")
    _rewrite(lab, lambda d, a: (np.where(d == 1, 9, d).astype(np.uint8), a))
    with pytest.raises(ValueError, match=r"phantom_003.*\[9\] not in dataset\.json"):
        NnUNetDataset(copy).load_case("phantom_003")


def test_nan_in_image(copy):
    img = os.path.join(copy, "imagesTr", "phantom_000_0000.nii.gz")

    def poison(d, a):
        d = d.astype(np.float32)
        d[3, 4, 5] = np.nan
        return d, a
    _rewrite(img, poison)
    with pytest.raises(ValueError, match=r"phantom_000.*phantom_000_0000\.nii\.gz.*NaN"):
        NnUNetDataset(copy).load_case("phantom_000")


def test_image_without_label_is_an_error(copy):
    os.remove(os.path.join(copy, "labelsTr", "phantom_002.nii.gz"))
    with pytest.raises(ValueError, match=r"phantom_002"):
        NnUNetDataset(copy).case_ids("Tr")


def test_missing_folder_and_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NnUNetDataset(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        NnUNetDataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data"):
        resolve_data(str(tmp_path / "nope"))


def test_write_is_idempotent(tiny_dataset):
    before = sorted(os.listdir(os.path.join(tiny_dataset, "imagesTr")))
    assert write_synthetic_dataset(tiny_dataset, num_train=4, num_test=1, shape=(48, 48, 16), seed=3) == tiny_dataset
    assert sorted(os.listdir(os.path.join(tiny_dataset, "imagesTr"))) == before


def test_mni152_from_nilearn():
    pytest.importorskip("nilearn", reason="mni152 needs the optional nilearn extra")
    from segfuse.data.mni152 import mni152_arrays
    t1, label, affine = mni152_arrays()
    assert t1.shape == label.shape == (149, 185, 157)
    assert set(np.unique(label)) == {0, 1, 2}
    assert 0.35 < (label == 1).sum() / (label > 0).sum() < 0.75   # grey vs white matter share
    assert np.allclose(affine[:3, :3], np.eye(3))
