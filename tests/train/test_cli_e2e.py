"""End to end through the CLI: train (subprocess) -> SIGKILL -> resume (subprocess) -> predict -> evaluate
(in-process through ``segfuse.cli.main`` on the eager path, to save interpreter start-ups)."""
import csv
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from segfuse.cli import main as cli
from segfuse.kernels import force_backend

from .conftest import run_cli


def cli_eager(*args):
    with force_backend("reference"):
        return cli([str(a) for a in args])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_kill_resume_predict_evaluate(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--model", "unet", "--data", tiny_data, "--run-dir", run, "--dims", "2", "--batch-size", "2",
              "--patch-size", "32", "32", "--iters-per-epoch", "1", "--val-every", "1000", "--no-progress",
              "--threads", "1"]
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "segfuse", "train", *map(str, common), "--iterations", "500"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:     # wait for at least two epochs (= two checkpoints)
            if (run / "metrics.csv").is_file() and len(_rows(run / "metrics.csv")) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        else:
            raise AssertionError("no checkpoint within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ck = torch.load(run / "last.pt", weights_only=False)          # intact despite the kill
    k = ck["iteration"]
    assert k >= 2 and len(ck["history"]) == k

    run_cli("train", *common, "--iterations", k + 2, "--resume")
    rows = _rows(run / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, k + 3))   # nothing lost, nothing repeated
    for r, h in zip(rows[:k], ck["history"]):
        assert float(r["train_loss"]) == float(f"{h['train_loss']:.6g}")
    dice = float(rows[-1]["val_dice_mean"])
    assert 0.0 <= dice <= 1.0
    for f in ("config.json", "last.pt", "best.pt", "curves.png"):
        assert (run / f).is_file(), f

    pred = tmp_path / "pred"
    assert cli_eager("predict", "--run", run, "--input", os.path.join(tiny_data, "imagesTs"), "--output", pred,
                     "--tta") == 0
    out = nib.load(pred / "phantom_005.nii.gz")
    ref = nib.load(os.path.join(tiny_data, "imagesTs", "phantom_005_0000.nii.gz"))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)

    cli_eager("evaluate", "--pred", pred, "--labels", os.path.join(tiny_data, "labelsTs"))
    assert "mean (foreground)" in capsys.readouterr().out
    summary = _rows(pred / "summary.csv")
    assert 0.0 <= float(summary[-1]["dice_mean"]) <= 1.0
    per_case = _rows(pred / "metrics.csv")
    assert {r["name"] for r in per_case} == {"liver", "spleen", "kidney", "stomach", "gland"}

    cli_eager("evaluate", "--run", run)            # predicts imagesTs itself (split auto -> test)
    assert "liver" in capsys.readouterr().out and (run / "eval_test" / "summary.csv").is_file()


def test_bad_arguments_fail_loudly(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        cli_eager("train", "--data", tmp_path / "missing", "--run-dir", tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="phantom_000"):
        cli_eager("evaluate", "--pred", tmp_path, "--labels", os.path.join(tiny_data, "labelsTr"))
    with pytest.raises(ValueError, match="--patch-size"):
        cli_eager("train", "--data", tiny_data, "--run-dir", tmp_path / "r", "--patch-size", "30", "30")
