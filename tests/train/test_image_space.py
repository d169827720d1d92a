"""Every prediction segfuse writes is in its input image's grid, affine and orientation, and ``segfuse evaluate``
scores it there: test split, validation cases and a 2D run's held-out slices, with and without ``--spacing``, on
a rotated, flipped, anisotropic volume. A dataset.json with a ``"dataset"`` key trains and evaluates.

The trained weights do not matter here: evaluation runs with an oracle network that reads each voxel's intensity
(the phantom's classes have distinct intensities), so its prediction is the label itself wherever the image says
so, and any flip, transpose or shift of the written prediction shows in the Dice.
"""
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import segfuse
from segfuse.data.nnunet import save_nifti, write_dataset_json
from segfuse.data.preprocess import resample
from segfuse.kernels import force_backend
from segfuse.metrics import dice_score, hd95
from segfuse.runs import Run

SHAPE, SPACING = (24, 20, 15), (0.9, 1.3, 2.4)
HU = {0: -500.0, 1: 37.5, 2: 400.0}          # CT window -175..250 -> 0, 0.5, 1 after normalisation
WRONG_SLICE = 3                               # class 1 is drawn with class 2's intensity on this slice
HELD_OUT = [3, 8]                             # foreground slices 1..10, every 5th from the 3rd (2D "slices" split)


def _affine():
    """Rotated 30 deg about z and 20 deg about x, x flipped, anisotropic voxels, an origin off zero."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ rz @ rx @ np.diag(SPACING)
    aff[:3, 3] = (40.0, -25.0, 10.0)
    return aff


def _case(i):
    """(image HU, label): an L-shaped class 1 over slices 1..10 and a box of class 2, shifted by i along x."""
    label = np.zeros(SHAPE, np.uint8)
    label[4:14, 3:8, 1:11] = 1
    label[4:8, 3:16, 1:11] = 1
    label[15:21, 12:18, 5:11] = 2
    label = np.roll(label, i, axis=0)
    image = np.vectorize(HU.get)(label).astype(np.float32)
    image[..., WRONG_SLICE][label[..., WRONG_SLICE] == 1] = HU[2]
    return image, label


def oracle_prediction(label):
    """What the oracle predicts in the input grid: the label, class 2 where the image shows class 2."""
    pred = label.copy()
    pred[..., WRONG_SLICE][label[..., WRONG_SLICE] == 1] = 2
    return pred


def _write_dataset(root, listed=False):
    """c0, c1 for training, c2 in imagesTs/labelsTs; with ``listed`` the training files live in scans/ and
    dataset.json lists them (no imagesTr/labelsTr)."""
    aff = _affine()
    subs = ("scans", "imagesTs", "labelsTs") if listed else ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
    for sub in subs:
        os.makedirs(os.path.join(root, sub))
    for i in range(3):
        image, label = _case(i)
        split = "Tr" if i < 2 else "Ts"
        img_dir = "scans" if listed and split == "Tr" else "images" + split
        lab_dir = "scans" if listed and split == "Tr" else "labels" + split
        save_nifti(os.path.join(root, img_dir, f"c{i}_0000.nii.gz"), image, aff)
        save_nifti(os.path.join(root, lab_dir, f"c{i}{'_seg' if listed else ''}.nii.gz"), label, aff)
    extra = {}
    if listed:
        extra["dataset"] = {f"c{i}": {"images": [f"scans/c{i}_0000.nii.gz"], "label": f"scans/c{i}_seg.nii.gz"}
                            for i in range(2)}
    write_dataset_json(root, ["CT"], {"background": 0, "a": 1, "b": 2}, 2, **extra)
    return str(root)


class Oracle(nn.Module):
    """Class c where the normalised intensity is near c / 2, voxel by voxel, in 2D or 3D."""
    size_multiple = 1

    def forward(self, x):
        levels = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, *[1] * (x.ndim - 2))
        return -50.0 * (x - levels) ** 2


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setattr(Run, "load_model", lambda self, checkpoint="last", device="cpu": Oracle().eval())


def _train(data, run_dir, dims, val_split, spacing):
    patch = (16, 16) if dims == 2 else (16, 16, 12)
    with force_backend("reference"):
        segfuse.train(model="unet", data=data, run_dir=str(run_dir), dims=dims, iterations=1, iters_per_epoch=1,
                      batch_size=1, patch_size=patch, progress=False, augment="none", val_split=val_split,
                      spacing=spacing, model_kwargs={"channels": (4, 8, 16)})
    return str(run_dir)


def _check_in_input_space(pred_file, image_file):
    pred, image = nib.load(pred_file), nib.load(image_file)
    assert pred.shape == image.shape == SHAPE
    assert np.allclose(pred.affine, image.affine, atol=1e-4)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(image.affine) == ("L", "A", "S")
    return np.asanyarray(pred.dataobj)


def _held_out_slices(label, spacing):
    """Input slices scored for a 2D run's "slices" split: those whose nearest slice of the run's grid was held
    out (every 5th foreground slice there, from the 3rd); the held-out slices themselves without resampling."""
    if spacing is None:
        return HELD_OUT
    _, resampled, _ = resample(np.zeros((1,) + SHAPE, np.float32), label, SPACING, spacing)
    n = resampled.shape[-1]
    held = [z for z in range(n) if resampled[..., z].any()][2::5]
    return [z for z in range(SHAPE[-1]) if int((z + 0.5) * n / SHAPE[-1]) in held]


def _check_placement(pred, oracle, c, exact):
    """Class ``c`` of the written prediction lies where the oracle put it: exactly, or (resampled to the run's
    grid and back, which blurs the small phantom) clearly better than any flipped placement would."""
    right = dice_score(pred == c, oracle == c)
    if exact:
        assert right == 1.0
        return
    flipped = [dice_score(np.flip(pred, axis) == c, oracle == c) for axis in range(3)]
    assert right > 0.7 and right > max(flipped) + 0.05, (c, right, flipped)


def _dice_rows(ev):
    return {(r["case"], r["class"]): r["dice"] for r in ev.rows}


RESAMPLED = (1.5, 1.5, 3.0)


@pytest.mark.parametrize("dims, val_split, spacing", [
    (2, "slices", None), (2, "slices", RESAMPLED), (2, "cases", None), (2, "cases", RESAMPLED),
    (3, "cases", RESAMPLED),   # 3D differs from 2D only inside predict_volume: one case
], ids=["2d-slices-own-spacing", "2d-slices-resampled", "2d-cases-own-spacing", "2d-cases-resampled",
        "3d-cases-resampled"])
def test_predictions_of_every_split_are_in_the_input_grid(tmp_path, oracle, dims, val_split, spacing):
    data = _write_dataset(tmp_path / "data")
    run = _train(data, tmp_path / "run", dims, val_split, spacing)
    labels = {f"c{i}": _case(i)[1] for i in range(3)}

    ev = segfuse.evaluate(run, split="val", device="cpu", overlays=val_split == "slices")
    cases = ["c0", "c1"] if val_split == "slices" else ["c1"]
    assert {r["case"] for r in ev.rows} == set(cases)
    for cid in cases:
        pred = _check_in_input_space(os.path.join(ev.predictions, f"{cid}.nii.gz"),
                                     os.path.join(data, "imagesTr", f"{cid}_0000.nii.gz"))
        lab = labels[cid]
        scored = np.zeros(SHAPE, bool)
        scored[..., _held_out_slices(lab, spacing) if val_split == "slices" else slice(None)] = True
        if spacing is None:     # the oracle's prediction, voxel for voxel
            assert np.array_equal(pred, oracle_prediction(lab))
        for c in (1, 2):        # scored in the input grid, with its spacing, on the held-out part
            row = next(r for r in ev.rows if (r["case"], r["class"]) == (cid, c))
            assert row["dice"] == pytest.approx(dice_score(pred == c, lab == c, scored))
            assert row["hd95"] == pytest.approx(hd95(pred == c, lab == c, SPACING, scored))
            _check_placement(pred, oracle_prediction(lab), c, exact=spacing is None)
        if spacing is None and val_split == "slices":   # the held-out slices hold the misdrawn one: Dice 2/3
            assert _dice_rows(ev)[(cid, 1)] == pytest.approx(2 / 3)
    if val_split == "slices":
        assert os.path.isfile(os.path.join(ev.out_dir, "overlays", "c0.png"))
        return
    ev = segfuse.evaluate(run, split="test", device="cpu", overlays=False)
    pred = _check_in_input_space(os.path.join(ev.predictions, "c2.nii.gz"),
                                 os.path.join(data, "imagesTs", "c2_0000.nii.gz"))
    for c in (1, 2):
        assert _dice_rows(ev)[("c2", c)] == pytest.approx(dice_score(pred == c, labels["c2"] == c))
        _check_placement(pred, oracle_prediction(labels["c2"]), c, exact=spacing is None)
    out = segfuse.predict(run, os.path.join(data, "imagesTs"), tmp_path / "pred", device="cpu")
    assert np.array_equal(_check_in_input_space(out.written["c2"], os.path.join(data, "imagesTs", "c2_0000.nii.gz")),
                          pred)


def test_a_dataset_listed_in_dataset_json_trains_and_evaluates(tmp_path, oracle):
    data = _write_dataset(tmp_path / "data", listed=True)
    assert not os.path.exists(os.path.join(data, "imagesTr"))
    run = _train(data, tmp_path / "run", 2, "cases", None)
    assert Run(run).config["num_classes"] == 3
    ev = segfuse.evaluate(run, split="val", device="cpu", overlays=False)
    pred = _check_in_input_space(os.path.join(ev.predictions, "c1.nii.gz"),
                                 os.path.join(data, "scans", "c1_0000.nii.gz"))
    assert np.array_equal(pred, oracle_prediction(_case(1)[1]))
