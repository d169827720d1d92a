"""``segfuse study`` / :func:`segfuse.study.supervision_study`: every arm under both budgets, one Dice + CE
formulation for all, scored on the held-out test cases (tiny phantoms, eager path, in-process)."""
import csv
import os

import pytest

from segfuse.cli import main as cli
from segfuse.kernels import force_backend
from segfuse.runs import Run
from segfuse.study import summarize, supervision_study

TINY = ["--model", "unet", "--model-arg", "channels=(8,16,32)", "--dims", "2", "--iters-per-epoch", "1",
        "--batch-size", "2", "--patch-size", "32", "32", "--augment", "none", "--val-split", "none"]


def test_study_command_runs_every_arm_under_both_budgets(tiny_data, tmp_path, capsys):
    out = tmp_path / "study"
    with force_backend("reference"):
        assert cli(["study", "--out", str(out), "--seeds", "0", "--iterations", "2", "--minutes", "0.01",
                    "--dice-ce", "lomix", "--data", tiny_data, *TINY]) == 0
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["budget"], r["supervision"]) for r in rows] == [
        (b, a) for b in ("iterations", "minutes") for a in ("single", "deep", "lomix")]
    assert all(r["iterations"] == "2" for r in rows[:3]) and all(int(r["iterations"]) >= 1 for r in rows[3:])
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 for r in rows)
    assert {r["split"] for r in rows} == {"test"}  # the phantoms have labelled test cases: scored there
    assert [k for k in rows[0] if k.startswith("dice_")][-1] == "dice_mean" and \
        not any("foreground" in k for k in rows[0]), "one column per class, then the mean"
    for arm in ("single", "deep", "lomix"):
        run = Run(out / f"iterations_{arm}_seed0")
        assert run.config["dice_ce"] == "lomix" and run.config["supervision"] == arm   # one formulation for all
    text = capsys.readouterr().out
    assert "Equal iterations" in text and "Equal wall time" in text and "| lomix |" in text
    assert (out / "summary.md").read_text().strip() in text


def test_study_refuses_options_it_sets_per_run(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="--seed"):
        cli(["study", "--out", str(tmp_path), "--data", tiny_data, "--seed", "3"])
    with pytest.raises(ValueError, match="not auto"):
        supervision_study(str(tmp_path), dice_ce="auto")


def test_summary_is_mean_and_std_over_seeds():
    rows = [dict(budget="iterations", supervision="single", seed=s, iterations=10, train_s=2.0, dice_a=d,
                 dice_mean=d) for s, d in ((0, 0.5), (1, 0.7))]
    text = summarize(rows)
    assert "| single | 0.600 ± 0.100 | 0.600 ± 0.100 | 10 | 2 |" in text
