"""FIAS through the CLI: ``segfuse train --model fias --supervision fias`` (auxiliary heads + FIAS loss), then
``segfuse predict`` / ``evaluate`` on its run (the model is rebuilt with its auxiliary heads so the checkpoint
loads). A tiny configuration on the tiny phantoms, eager path (in-process)."""
import csv
import os

import nibabel as nib

from segfuse.cli import main as cli
from segfuse.kernels import force_backend

TINY = ["--model-arg", "widths=(8,8,8,8)", "--model-arg", "embed_dim=6", "--model-arg", "depths=(1,1,1,1)",
        "--model-arg", "num_heads=(3,3,3,3)", "--model-arg", "stem_hidden=4"]


def _cli(*args):
    with force_backend("reference"):
        return cli([str(a) for a in args])


def test_fias_supervision_trains_predicts_and_evaluates(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli("train", "--model", "fias", "--supervision", "fias", "--dims", "2", "--data", tiny_data,
                "--run-dir", run, "--batch-size", "2", "--patch-size", "32", "32", "--iterations", "4",
                "--iters-per-epoch", "2", "--val-every", "1000", "--no-progress", *TINY) == 0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and 0.0 <= float(rows[-1]["val_dice_mean"]) <= 1.0
    pred = tmp_path / "pred"
    assert _cli("predict", "--run", run, "--input", os.path.join(tiny_data, "imagesTs"), "--output", pred) == 0
    out = nib.load(pred / "phantom_005.nii.gz")
    assert out.shape == nib.load(os.path.join(tiny_data, "imagesTs", "phantom_005_0000.nii.gz")).shape
    _cli("evaluate", "--pred", pred, "--labels", os.path.join(tiny_data, "labelsTs"))
    assert "mean (foreground)" in capsys.readouterr().out
