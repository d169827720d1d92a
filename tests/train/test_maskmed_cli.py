"""MaskMed through the CLI like any other model: ``segfuse train --model maskmed --dims 3`` (its own set
criterion, CNN / transformer learning-rate groups), ``--resume``, then ``segfuse predict`` and ``segfuse
evaluate`` on its run, unchanged. A tiny configuration on the tiny phantoms, eager path (in-process)."""
import csv
import os

import nibabel as nib
import torch

from segfuse.cli import main as cli
from segfuse.kernels import force_backend

TINY = ["--model-arg", "widths=(8,16,32)", "--model-arg", "blocks_per_stage=(1,1,1)", "--model-arg", "hidden_dim=32",
        "--model-arg", "norm_groups=8", "--model-arg", "fsad_heads=4", "--model-arg", "fsad_points=2",
        "--model-arg", "fsad_query_stages=2", "--model-arg", "fsad_layers=1", "--model-arg", "fsad_ffn_dim=64",
        "--model-arg", "head_heads=4", "--model-arg", "head_ffn_dim=64"]


def _cli(*args):
    with force_backend("reference"):
        return cli([str(a) for a in args])


def test_maskmed_trains_resumes_predicts_and_evaluates(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--model", "maskmed", "--dims", "3", "--data", tiny_data, "--run-dir", run,
              "--batch-size", "1", "--iters-per-epoch", "3", "--val-every", "1000", "--no-progress", "--lr", "3e-3",
              *TINY]
    assert _cli(*common, "--iterations", "6", "--stop-after-epochs", "1") == 0
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["iteration"] == 3
    # the transformer parts (FSAD + head) train at 0.1 x the CNN's learning rate (MaskMed's default)
    groups = ck["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["cnn", "transformer"]
    assert abs(groups[1]["lr"] - 0.1 * groups[0]["lr"]) < 1e-12 and groups[0]["lr"] > 0
    assert _cli(*common, "--iterations", "6", "--resume", "--transformer-lr-scale", "0.5") == 0
    groups = torch.load(run / "last.pt", weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["lr"] > 0 and abs(groups[1]["lr"] - 0.5 * groups[0]["lr"]) < 1e-12  # a new scale given on resume applies
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    losses = [float(r["train_loss"]) for r in rows]
    assert all(torch.isfinite(torch.tensor(losses))) and 0.0 <= float(rows[-1]["val_dice_mean"]) <= 1.0
    cfg = (run / "config.json").read_text()
    assert '"model": "maskmed"' in cfg

    pred = tmp_path / "pred"
    assert _cli("predict", "--run", run, "--input", os.path.join(tiny_data, "imagesTs"), "--output", pred) == 0
    out = nib.load(pred / "phantom_005.nii.gz")
    ref = nib.load(os.path.join(tiny_data, "imagesTs", "phantom_005_0000.nii.gz"))
    assert out.shape == ref.shape
    assert set(out.get_fdata().astype(int).ravel().tolist()) <= set(range(6))
    _cli("evaluate", "--pred", pred, "--labels", os.path.join(tiny_data, "labelsTs"))
    assert "mean (foreground)" in capsys.readouterr().out


def test_maskmed_refuses_another_supervision(tiny_data, tmp_path):
    import pytest
    with pytest.raises(ValueError, match="brings its own criterion"):
        _cli("train", "--model", "maskmed", "--dims", "3", "--data", tiny_data, "--run-dir", tmp_path / "r",
             "--supervision", "deep", "--iterations", "1", *TINY)
