"""Issue 15: user-caused data faults are named (file, key, values) and contained."""
import json
import os
import warnings

import nibabel as nib
import numpy as np
import pytest

from segfuse.data import NnUNetDataset, UserError
from segfuse.data.preprocess import Preprocess
from segfuse.data.split import load_volumes


def _set_label(path, fn):
    img = nib.load(path)
    data = fn(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine), path)


# ---------------------------------------------------------------- item 2: label values in their own dtype
def test_int32_label_65537_is_not_wrapped_to_class_1(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_001.nii.gz")
    _set_label(lab, lambda d: np.where(d == 1, 65537, d.astype(np.int32)))
    assert nib.load(lab).get_data_dtype() == np.int32
    with pytest.raises(ValueError, match=r"phantom_001\.nii\.gz.*\[65537\]"):
        NnUNetDataset(copy).load_case("phantom_001")


def test_uint16_label_65535_reported_as_itself(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_001.nii.gz")
    _set_label(lab, lambda d: np.where(d == 1, 65535, d.astype(np.uint16)))
    with pytest.raises(ValueError, match=r"phantom_001\.nii\.gz.*\[65535\]") as e:
        NnUNetDataset(copy).load_case("phantom_001")
    # the values list names 65535 only (a wrap to int16 would show -1); the message's path may hold "-1"
    values = str(e.value).split("has values")[-1]
    assert "-1" not in values and nib.load(lab).get_data_dtype() == np.uint16


def test_non_integer_float_label_names_file_and_values(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_002.nii.gz")
    _set_label(lab, lambda d: np.where(d == 1, 1.5, d.astype(np.float32)))
    with pytest.raises(ValueError, match=r"phantom_002\.nii\.gz.*non-integer.*1\.5"):
        NnUNetDataset(copy).load_case("phantom_002")


def test_large_int_label_without_dataset_json_check_is_not_wrapped(copy):
    from segfuse.data import load_case_files
    ds = NnUNetDataset(copy)
    lab = os.path.join(copy, "labelsTr", "phantom_001.nii.gz")
    _set_label(lab, lambda d: np.where(d == 1, 65537, d.astype(np.int32)))
    with pytest.raises(ValueError, match=r"65537"):
        load_case_files("phantom_001", ds.image_files("phantom_001"), lab)


# ---------------------------------------------------------------- item 3: a truncated .nii.gz is named
def test_truncated_gzip_names_the_file(copy):
    img = os.path.join(copy, "imagesTr", "phantom_000_0000.nii.gz")
    raw = open(img, "rb").read()
    with open(img, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as e:
        NnUNetDataset(copy).load_case("phantom_000")
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert "phantom_000_0000.nii.gz" in str(e.value) and "phantom_000" in str(e.value)


def test_random_bytes_nifti_names_the_file(copy):
    lab = os.path.join(copy, "labelsTr", "phantom_003.nii.gz")
    with open(lab, "wb") as f:
        f.write(os.urandom(300))
    with pytest.raises(ValueError, match=r"labelsTr/phantom_003\.nii\.gz"):
        NnUNetDataset(copy).load_case("phantom_003")


# ---------------------------------------------------------------- item 6: dataset.json types, no foreground
def _meta(copy, **change):
    path = os.path.join(copy, "dataset.json")
    meta = json.load(open(path))
    meta.update(change)
    json.dump(meta, open(path, "w"))
    return path


@pytest.mark.parametrize("key,value,expected", [
    ("channel_names", ["CT"], "object"),
    ("labels", ["background", "liver"], "object"),
    ("file_ending", 5, "string"),
])
def test_dataset_json_wrong_type_names_key_type_and_file(copy, key, value, expected):
    _meta(copy, **{key: value})
    with pytest.raises(ValueError) as e:
        NnUNetDataset(copy)
    msg = str(e.value)
    assert isinstance(e.value, UserError)
    assert os.path.join(copy, "dataset.json") in msg and repr(key) in msg and expected in msg, msg


def test_dataset_json_invalid_json_names_the_file(copy):
    path = os.path.join(copy, "dataset.json")
    with open(path, "w") as f:
        f.write('{"channel_names": {"0": "CT"},')
    with pytest.raises(ValueError, match=r"dataset\.json.*not valid JSON") as e:
        NnUNetDataset(copy)
    assert isinstance(e.value, UserError)


def test_no_foreground_anywhere_warns_at_load_time(copy):
    for f in os.listdir(os.path.join(copy, "labelsTr")):
        _set_label(os.path.join(copy, "labelsTr", f), lambda d: np.zeros_like(d))
    ds = NnUNetDataset(copy)
    with pytest.warns(UserWarning, match=r"no foreground"):
        load_volumes(ds, ds.case_ids("Tr"), Preprocess(ds.channel_names))


def test_foreground_present_does_not_warn(tiny_dataset):
    ds = NnUNetDataset(tiny_dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volumes(ds, ds.case_ids("Tr")[:1], Preprocess(ds.channel_names))


def test_missing_dataset_is_a_user_error(tmp_path):
    from segfuse.data import resolve_data
    with pytest.raises(FileNotFoundError) as e:
        resolve_data(str(tmp_path / "nope"))
    assert isinstance(e.value, UserError)
