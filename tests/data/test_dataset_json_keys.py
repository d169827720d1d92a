"""dataset.json as nnU-Net v2 users write it: the "ignore" label (not a class; never a foreground centre or a
held-out foreground slice) and the "dataset" key listing the training cases (paths relative, absolute or with
$VARS; imagesTr/labelsTr not needed)."""
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from segfuse.data import DataError, MissingFileError, NnUNetDataset
from segfuse.data.sampling import PatchDataset, Volume, holdout_slices

ORGAN_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "stomach": 4}


def _edit_json(root, **keys):
    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    meta.update(keys)
    with open(path, "w") as f:
        json.dump(meta, f)


def test_ignore_label_is_read_and_is_not_a_class(copy):
    _edit_json(copy, labels={**ORGAN_LABELS, "ignore": 5})          # the phantoms' "gland" (5) becomes ignore
    ds = NnUNetDataset(copy)
    assert ds.ignore_label == 5 and ds.num_classes == 5
    assert ds.class_names == ["background", "liver", "spleen", "kidney", "stomach"]
    case = ds.load_case("phantom_001")
    assert (case.label == 5).any()                                   # ignore voxels load as themselves
    _edit_json(copy, labels=ORGAN_LABELS)                            # without "ignore", 5 is an unknown value
    assert NnUNetDataset(copy).ignore_label is None
    with pytest.raises(DataError, match=r"phantom_001.*values \[5\] not in"):
        NnUNetDataset(copy).load_case("phantom_001")


@pytest.mark.parametrize("labels, match", [
    ({"background": 0, "liver": 1, "ignore": 1}, r"'ignore' must be the largest label value, 2 .*got 1"),
    ({"background": 0, "liver": 1, "ignore": 7}, r"'ignore' must be the largest label value, 2 .*got 7"),
    ({"background": 0, "liver": 1, "ignore": [2]}, r"'ignore' has value \[2\]"),
    ({"background": 0, "liver": 2, "ignore": 3}, r"0\.\.K-1, got \[0, 2\] \(besides 'ignore'\)"),
])
def test_a_misplaced_ignore_label_is_an_error_naming_the_file(copy, labels, match):
    _edit_json(copy, labels=labels)
    with pytest.raises(DataError, match=r"dataset\.json: .*" + match):
        NnUNetDataset(copy)


def test_dataset_key_lists_cases_anywhere(copy, tmp_path, monkeypatch):
    """Relative, absolute and $VAR paths; imagesTr/labelsTr removed; the test split still comes from imagesTs."""
    originals = {c: nib.load(os.path.join(copy, "labelsTr", f"{c}.nii.gz")).get_fdata() for c in
                 ("phantom_000", "phantom_001", "phantom_002")}
    elsewhere = tmp_path / "elsewhere"
    os.makedirs(os.path.join(copy, "scans"))
    elsewhere.mkdir()
    monkeypatch.setenv("SEGFUSE_TEST_SCANS", str(elsewhere))
    move = {"phantom_000": (os.path.join(copy, "scans"), "scans/"),              # relative to the dataset
            "phantom_001": (str(elsewhere), str(elsewhere) + "/"),               # absolute
            "phantom_002": (str(elsewhere), "$SEGFUSE_TEST_SCANS/")}             # an environment variable
    listing = {}
    for i, (cid, (folder, prefix)) in enumerate(move.items()):
        shutil.move(os.path.join(copy, "imagesTr", f"{cid}_0000.nii.gz"), os.path.join(folder, f"ct{i}.nii.gz"))
        shutil.move(os.path.join(copy, "labelsTr", f"{cid}.nii.gz"), os.path.join(folder, f"seg{i}.nii.gz"))
        listing[f"patient{2 - i}"] = {"images": [f"{prefix}ct{i}.nii.gz"], "label": f"{prefix}seg{i}.nii.gz"}
    shutil.rmtree(os.path.join(copy, "imagesTr"))
    shutil.rmtree(os.path.join(copy, "labelsTr"))
    _edit_json(copy, dataset=listing)

    ds = NnUNetDataset(copy)
    assert ds.case_ids("Tr") == ["patient0", "patient1", "patient2"] and ds.case_ids("Ts") == ["phantom_004"]
    for i, cid in enumerate(move):
        case = ds.load_case(f"patient{2 - i}")
        assert case.image.shape == (1, 48, 48, 16) and np.array_equal(case.label, originals[cid])
        assert os.path.isabs(case.label_file) and case.label_file.endswith(f"seg{i}.nii.gz")
    assert ds.load_case("phantom_004", "Ts").label is not None


@pytest.mark.parametrize("entry, match", [
    ("imagesTr/a_0000.nii.gz", r"'dataset' entry 'a' must be an object with a list of image files and a label"),
    ({"images": ["imagesTr/a_0000.nii.gz"]}, r"'dataset' entry 'a' must be an object"),
    ({"images": "imagesTr/a_0000.nii.gz", "label": "labelsTr/a.nii.gz"}, r"'dataset' entry 'a' must be an object"),
    ({"images": ["x_0000.nii.gz", "x_0001.nii.gz"], "label": "x.nii.gz"},
     r"'dataset' entry 'a' lists 2 image file\(s\), but channel_names has 1"),
])
def test_malformed_dataset_entries_name_the_case_and_the_file(copy, entry, match):
    _edit_json(copy, dataset={"a": entry})
    with pytest.raises(DataError, match=r"dataset\.json: " + match):
        NnUNetDataset(copy)


def test_dataset_key_errors(copy):
    _edit_json(copy, dataset=[{"images": ["x.nii.gz"], "label": "y.nii.gz"}])
    with pytest.raises(DataError, match=r"dataset\.json: key 'dataset' must be an object"):
        NnUNetDataset(copy)
    _edit_json(copy, dataset={"sub/case": {"images": ["x.nii.gz"], "label": "y.nii.gz"}})
    with pytest.raises(DataError, match=r"case id 'sub/case'.*plain file name"):
        NnUNetDataset(copy)
    _edit_json(copy, dataset={"a": {"images": ["imagesTr/phantom_000_0000.nii.gz"], "label": "labels/none.nii.gz"}})
    ds = NnUNetDataset(copy)
    with pytest.raises(MissingFileError, match=r"case 'a': file .*labels/none\.nii\.gz is missing"):
        ds.load_case("a")
    with pytest.raises(DataError, match=r"case 'b' is not listed"):
        ds.image_files("b")


def test_without_dataset_key_the_folders_are_required(copy):
    shutil.rmtree(os.path.join(copy, "labelsTr"))
    with pytest.raises(MissingFileError, match=r"labelsTr not found \(and .*dataset\.json has no 'dataset' key"):
        NnUNetDataset(copy)


def test_foreground_oversampling_never_centres_on_ignored_voxels():
    label = np.zeros((32, 32, 8), np.int16)
    label[2:5, 2:5, 2:5] = 1                 # a small class ...
    label[12:, :, :] = 2                     # ... and a large ignored region
    image = np.random.default_rng(0).normal(size=(1,) + label.shape).astype(np.float32)
    ds = PatchDataset([(image, label)], (8, 8, 4), length=40, seed=0, fg_prob=1.0, ignore_label=2)
    assert list(ds.fg_coords) == [1]
    assert all((ds[i][1] == 1).any() for i in range(40))          # every patch is centred on the class
    plain = PatchDataset([(image, label)], (8, 8, 4), length=40, seed=0, fg_prob=1.0)
    assert list(plain.fg_coords) == [1, 2] and not all((plain[i][1] == 1).any() for i in range(40))


def test_slices_of_ignored_voxels_only_are_not_held_out():
    label = np.zeros((6, 6, 20), np.int16)
    label[1:4, 1:4, :10] = 1                 # foreground in slices 0..9
    label[2:5, 2:5, 10:] = 3                 # slices 10..19: ignored voxels only
    v = Volume("c", np.zeros((1,) + label.shape, np.float32), label, (1.0, 1.0, 1.0))
    assert holdout_slices(v, 5, ignore_label=3)[1] == [2, 7]
    assert holdout_slices(v, 5)[1] == [2, 7, 12, 17]
