"""In-process training: run files, resume equals an uninterrupted run, LoMix weights logged."""
import csv
import os

import torch

from segfuse.kernels import force_backend
from segfuse.runs.checkpoint import load_checkpoint
from segfuse.training import TrainConfig, Trainer


def _cfg(data, run_dir, **kw):
    base = dict(model="unet", data=data, run_dir=str(run_dir), dims=2, iterations=2, iters_per_epoch=1,
                batch_size=2, patch_size=(32, 32), progress=False, seed=7, augment="default")
    base.update(kw)
    return TrainConfig(**base)


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    with force_backend("reference"):
        Trainer(_cfg(tiny_data, tmp_path / "a", val_split="none")).fit()
        Trainer(_cfg(tiny_data, tmp_path / "b", val_split="none", stop_after_epochs=1)).fit()
        assert load_checkpoint(str(tmp_path / "b" / "last.pt"))["iteration"] == 1
        Trainer(_cfg(tiny_data, tmp_path / "b", val_split="none", resume=True)).fit()
    a = load_checkpoint(str(tmp_path / "a" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert a["iteration"] == b["iteration"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_lomix_run_writes_weights_and_plots(tiny_data, tmp_path):
    with force_backend("reference"):
        final = Trainer(_cfg(tiny_data, tmp_path / "l", supervision="lomix", iterations=1)).fit()
    rd = tmp_path / "l"
    for f in ("config.json", "metrics.csv", "last.pt", "best.pt", "curves.png", "lomix_weights.png"):
        assert (rd / f).is_file(), f
    assert 0.0 <= final["val_dice_mean"] <= 1.0
    row = list(csv.DictReader(open(rd / "metrics.csv")))[-1]
    assert any(k.startswith("w_") for k in row)


def test_existing_run_needs_resume(tiny_data, tmp_path):
    import pytest
    with force_backend("reference"):
        Trainer(_cfg(tiny_data, tmp_path / "r", iterations=1, val_split="none")).fit()
        with pytest.raises(FileExistsError, match="--resume"):
            Trainer(_cfg(tiny_data, tmp_path / "r", iterations=1, val_split="none")).fit()
    assert os.path.isfile(tmp_path / "r" / "last.pt")


def test_3d_patch_training_and_sliding_window_validation(tiny_data, tmp_path):
    with force_backend("reference"):
        final = Trainer(_cfg(tiny_data, tmp_path / "3d", dims=3, patch_size=(32, 32, 16), iterations=1,
                             supervision="deep", batch_size=1)).fit()
    assert 0.0 <= final["val_dice_mean"] <= 1.0
    cfg = load_checkpoint(str(tmp_path / "3d" / "last.pt"))["config"]
    assert cfg["val_split_resolved"] == "cases" and cfg["num_maps"] == 2
