"""nnU-Net's ignore label: not a class (num_classes, the model's outputs and class_names leave it out) and its
voxels count for nothing: not in any loss, not in validation Dice, not in ``segfuse evaluate``'s Dice/HD95.

Checked by construction: with a pointwise network (a 1x1 convolution sees one voxel), changing the image under
the ignored voxels changes the outputs there only, so it must change neither the loss (nor its gradients) nor
any metric. The loss tests and the trained-run tests need the losses' ``ignore_index`` (segfuse.losses).
"""
import csv
import json
import math
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import segfuse
from segfuse.kernels import force_backend
from segfuse.metrics import hd95, per_class_metrics
from segfuse.runs import Run
from segfuse.training import TrainConfig, Trainer
from segfuse.training import trainer as trainer_module
from segfuse.training.factory import build_loss

MASKMED_SMALL = dict(widths=(8, 16, 32, 32), blocks_per_stage=(1, 1, 1, 1), hidden_dim=32, fsad_heads=4,
                     fsad_points=2, head_heads=4, norm_groups=8, head_ffn_dim=64, fsad_ffn_dim=64)
IGNORE = 5          # the phantoms' "gland" value becomes the ignore label, and a block of every label file too
CLASSES = ["background", "liver", "spleen", "kidney", "stomach"]


def _ignore_dataset(src, dst):
    """A copy of a phantom dataset with "ignore": 5 and voxels x >= 36 of every label file ignored."""
    shutil.copytree(src, dst)
    for sub in ("labelsTr", "labelsTs"):
        for f in os.listdir(os.path.join(dst, sub)):
            path = os.path.join(dst, sub, f)
            img = nib.load(path)
            lab = np.asanyarray(img.dataobj).copy()
            lab[36:] = IGNORE
            nib.save(nib.Nifti1Image(lab, img.affine), path)
    meta_path = os.path.join(dst, "dataset.json")
    meta = json.load(open(meta_path))
    meta["labels"] = {**{n: i for i, n in enumerate(CLASSES)}, "ignore": IGNORE}
    json.dump(meta, open(meta_path, "w"))
    return str(dst)


class Pointwise(nn.Module):
    """Logits from each voxel's intensity alone: class c where the normalised CT value is near c / (K - 1)
    (CT window -> [0, 1]); ``maps`` > 1 returns that many independent 1x1 maps (deep supervision)."""

    def __init__(self, num_classes=len(CLASSES), maps=0, spatial_dims=2):
        super().__init__()
        self.register_buffer("levels", torch.linspace(0, 1, num_classes))
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.heads = nn.ModuleList(conv(1, num_classes, 1) for _ in range(maps))
        self.size_multiple = 1

    def forward(self, x):
        if self.heads:
            return [h(x) for h in self.heads]
        return -50.0 * (x - self.levels.view(1, -1, *[1] * (x.ndim - 2))) ** 2


@pytest.fixture(scope="module")
def ignore_data(tiny_data, tmp_path_factory):
    return _ignore_dataset(tiny_data, tmp_path_factory.mktemp("ignore") / "ds")


@pytest.fixture(scope="module")
def ignore_run(ignore_data, tmp_path_factory):
    """A 2-iteration 2D U-Net trained on the dataset with the ignore label: (trainer, last metrics row)."""
    run_dir = tmp_path_factory.mktemp("ignore_run") / "run"
    cfg = TrainConfig(model="unet", data=ignore_data, run_dir=str(run_dir), dims=2, iterations=2, iters_per_epoch=1,
                      batch_size=2, patch_size=(32, 32), progress=False, seed=3, augment="none",
                      model_kwargs={"channels": (8, 16, 32)})
    with force_backend("reference"):
        trainer = Trainer(cfg)
        final = trainer.fit()
    return trainer, final


def _same_rows(a, b):
    """Metric rows equal, NaN (a class absent from prediction and reference) equal to NaN."""
    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    return len(a) == len(b) and all(ra.keys() == rb.keys() and all(same(ra[k], rb[k]) for k in ra)
                                    for ra, rb in zip(a, b))


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_score_only_the_masked_voxels():
    gt = np.zeros((20, 20, 8), np.int16)
    gt[4:12, 4:12, 2:6] = 1
    gt[13:17, 2:8, 1:7] = 2
    gt[:, 10:, :][gt[:, 10:, :] > 0] = 3                      # part of both objects is ignored
    gt[:, 16:, :] = 3                                         # and a slab of background
    mask = gt != 3
    pred = np.where(mask, gt, 0)
    other = np.where(mask, gt, np.random.default_rng(0).integers(0, 3, gt.shape))   # any class under the ignored voxels
    m = per_class_metrics(pred, gt, 3, (1.0, 1.5, 2.0), mask=mask)
    assert m == per_class_metrics(other, gt, 3, (1.0, 1.5, 2.0), mask=mask)
    assert m == {1: {"dice": 1.0, "hd95": 0.0}, 2: {"dice": 1.0, "hd95": 0.0}}
    # unmasked, the same arrays disagree: the ignored voxels would count
    assert per_class_metrics(other, gt, 3, (1.0, 1.5, 2.0))[1]["dice"] < 0.9
    # HD95 over the scored voxels: the scored part of class 1 shifted by one voxel along x -> 1 mm
    shifted = np.where(mask, np.roll(gt == 1, 1, axis=0), False)
    assert hd95(shifted, gt == 1, (1.0, 1.0, 1.0), mask) == pytest.approx(1.0)


def test_evaluate_pred_labels_reads_the_ignore_label_beside_the_labels(ignore_data, tmp_path):
    labels = os.path.join(ignore_data, "labelsTs")
    ref = nib.load(os.path.join(labels, "phantom_005.nii.gz"))
    lab = np.asanyarray(ref.dataobj)
    results = []
    for under_ignore in (1, 3):                                 # liver, then kidney, where the label says ignore
        folder = tmp_path / f"pred{under_ignore}"
        folder.mkdir()
        nib.save(nib.Nifti1Image(np.where(lab == IGNORE, under_ignore, lab).astype(np.uint8), ref.affine),
                 str(folder / "phantom_005.nii.gz"))
        results.append(segfuse.evaluate(pred=folder, labels=labels, out=tmp_path / f"ev{under_ignore}"))
    a, b = results
    assert [s["name"] for s in a.summary] == CLASSES[1:] + ["mean (foreground)"]
    assert _same_rows(a.rows, b.rows) and a.mean_dice == 1.0
    assert all(r["hd95"] == 0.0 for r in a.rows if r["dice"] == 1.0)
    assert os.path.isfile(tmp_path / "ev1" / "overlays" / "phantom_005.png")
    # the same files, scored as if "ignore" were not in dataset.json: liver predicted on ignored voxels counts
    plain = tmp_path / "plain"
    shutil.copytree(labels, plain / "labelsTs")
    liver = [r for r in segfuse.evaluate(pred=tmp_path / "pred1", labels=plain / "labelsTs",
                                         num_classes=len(CLASSES), overlays=False).rows if r["class"] == 1]
    assert liver[0]["dice"] < 0.99


# ---------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("supervision", ["single", "deep", "lomix", "fias"])
def test_losses_leave_ignored_voxels_out(supervision):
    torch.manual_seed(0)
    maps = 1 if supervision == "single" else 3
    model = Pointwise(num_classes=3, maps=maps)
    fn, mod = build_loss(supervision, maps, 3, 2, ignore_index=3)
    x = torch.randn(2, 1, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    y[..., 10:] = 3                                            # the last 6 columns are ignored
    x_other = x.clone()
    x_other[..., 10:] = 5.0 * torch.randn(2, 1, 16, 6)          # another image under the ignored voxels

    def loss_and_grads(inp, target):
        model.zero_grad()
        mod.zero_grad()
        out = model(inp)
        with force_backend("reference"):
            loss = fn(out[0] if maps == 1 else out, target)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in list(model.parameters()) + list(mod.parameters())
                                if p.grad is not None]

    loss, grads = loss_and_grads(x, y)
    loss_other, grads_other = loss_and_grads(x_other, y)
    assert torch.isfinite(loss) and torch.allclose(loss, loss_other, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(grads_other) > 0
    assert all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(grads, grads_other))
    if supervision == "single":   # CE mean and per-sample Dice sums over the scored voxels: the cropped problem
        cropped, _ = loss_and_grads(x[..., :10], y[..., :10])
        assert torch.allclose(loss, cropped, rtol=1e-5, atol=1e-6)


class _OwnCriterionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def criterion(self):
        return nn.MSELoss()


def test_a_model_with_its_own_criterion_refuses_the_ignore_label():
    with pytest.raises(ValueError, match=r"_OwnCriterionNet.*ignore label \(3"):
        build_loss("single", 1, 3, 2, model=_OwnCriterionNet(), ignore_index=3)
    fn, _ = build_loss("single", 1, 3, 2, model=_OwnCriterionNet())      # without one it is used as before
    assert isinstance(fn, nn.MSELoss)


def test_maskmed_trains_its_set_criterion_without_the_ignored_voxels():
    """MaskMed's own criterion takes the ignore label (its mask terms leave those voxels out): with a 1x1 network
    standing in for MaskMed's outputs, changing the logits under ignored voxels changes nothing."""
    from segfuse.models import create_model
    net = create_model("maskmed", 3, 1, 3, num_queries=4, **MASKMED_SMALL)
    fn, crit = build_loss("single", 1, 3, 3, model=net, ignore_index=IGNORE)
    assert crit.ignore_index == IGNORE
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2, 4, 8, 8), generator=g)
    y[..., 4:] = IGNORE
    cls = [torch.randn(2, 4, 4, generator=g)]
    masks = torch.randn(2, 4, 4, 8, 8, generator=g)

    def loss_and_grad(m):
        m = m.clone().requires_grad_()
        loss = fn({"class_logits": cls, "mask_logits": [m]}, y)
        return loss, torch.autograd.grad(loss, [m])[0]

    other = masks.clone()
    other[..., 4:] = torch.randn(2, 4, 4, 8, 4, generator=g) * 10
    (a, ga), (b, gb) = loss_and_grad(masks), loss_and_grad(other)
    assert torch.isfinite(a) and torch.allclose(a, b, rtol=1e-6, atol=1e-7) and torch.allclose(ga, gb)


# ---------------------------------------------------------------------------------------------- training
def test_the_ignore_label_is_not_learned_as_a_class(ignore_run):
    trainer, final = ignore_run
    run = Run(trainer.cfg.run_dir)
    assert run.num_classes == len(CLASSES) and run.class_names == CLASSES and run.ignore_label == IGNORE
    with torch.no_grad():
        assert run.load_model("last")(torch.zeros(1, 1, 32, 32)).shape[1] == len(CLASSES)
    header = next(csv.reader(open(os.path.join(trainer.cfg.run_dir, "metrics.csv"))))
    dice_columns = [h for h in header if h.startswith("val_dice_")]
    assert dice_columns == [f"val_dice_{c}" for c in CLASSES[1:]] + ["val_dice_mean"]
    per_class = [final[f"val_dice_{c}"] for c in CLASSES[1:]]
    assert final["val_dice_mean"] == pytest.approx(np.nanmean(per_class))


def test_validation_dice_leaves_ignored_voxels_out(ignore_run, monkeypatch):
    trainer, _ = ignore_run
    labels = {id(v.image): v.label for v in trainer.val_volumes}
    assert all((lab == IGNORE).any() for lab in labels.values())

    def perfect_but_liver_under_ignore(model, image, dims, patch, k, **kw):
        lab = np.where(labels[id(image)] == IGNORE, 1, labels[id(image)])
        return np.eye(k, dtype=np.float32)[lab].transpose(3, 0, 1, 2)

    monkeypatch.setattr(trainer_module, "predict_volume", perfect_but_liver_under_ignore)
    out = trainer.validate()
    assert "val_dice_ignore" not in out and out["val_dice_liver"] == 1.0 and out["val_dice_mean"] == 1.0


@pytest.mark.parametrize("split, case", [("val", "phantom_002"), ("test", "phantom_005")])
def test_evaluate_a_run_scores_no_ignored_voxel(ignore_run, ignore_data, monkeypatch, split, case):
    trainer, _ = ignore_run
    monkeypatch.setattr(Run, "load_model", lambda self, checkpoint="last", device="cpu": Pointwise().eval())
    sub = "imagesTr" if split == "val" else "imagesTs"
    image_path = os.path.join(ignore_data, sub, f"{case}_0000.nii.gz")
    original = nib.load(image_path)
    label_path = os.path.join(ignore_data, "labels" + sub[-2:], f"{case}.nii.gz")
    ignored = np.asanyarray(nib.load(label_path).dataobj) == IGNORE
    runs = []
    try:
        for hu in (-1000.0, 3000.0):                    # background, then the top class, under the ignored voxels
            data = np.asanyarray(original.dataobj).astype(np.float32)
            data[ignored] = hu
            nib.save(nib.Nifti1Image(data, original.affine, original.header), image_path)
            ev = segfuse.evaluate(trainer.cfg.run_dir, split=split, device="cpu", overlays=hu > 0)
            pred = np.asanyarray(nib.load(os.path.join(ev.predictions, f"{case}.nii.gz")).dataobj)
            runs.append((ev, pred))
    finally:
        nib.save(original, image_path)
    (a, pred_a), (b, pred_b) = runs
    assert {r["case"] for r in a.rows} == {case} and len(a.summary) == len(CLASSES)
    assert not np.array_equal(pred_a[ignored], pred_b[ignored])             # the predictions did change there ...
    assert np.array_equal(pred_a[~ignored], pred_b[~ignored])
    assert _same_rows(a.rows, b.rows)                                        # ... and no metric did
