"""The supervision study: single output vs deep supervision vs LoMix, on one model and data set, fairly.

Every arm trains the same model with the same Dice + CE formulation (``dice_ce``: MONAI's by default, for
every arm), the same data, augmentation and seeds, under two budgets: **equal iterations** (the time
each arm took is reported) and **equal wall time** (``minutes`` per run; the iterations each arm reached
are reported). Each run is scored on the data set's held-out cases with :func:`segfuse.evaluate`
(``split="auto"``: the labelled test cases, ``imagesTs`` + ``labelsTs``, where the data set has them, as the
synthetic phantoms do; else the validation split, e.g. MNI152's held-out axial slices). Results: mean ± std over seeds per arm and
budget.

    segfuse study --data mni152 --model lgmsnet --spacing 2 2 2 --batch-size 4 --iterations 80 --minutes 1

Files in ``out``: one run folder per (budget, arm, seed), ``runs.csv`` (one row per run) and ``summary.md``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

ARMS = ("single", "deep", "lomix")


@dataclasses.dataclass
class StudyResult:
    """``rows``: one dict per run (budget, supervision, seed, iterations, train_s, dice_<class>..., dice_mean);
    ``summary``: the markdown table; ``out``: the folder."""
    rows: List[Dict]
    summary: str
    out: str


def _run_one(out: str, budget: str, arm: str, seed: int, iterations: Optional[int], minutes: Optional[float],
             train_options: Dict, device: str) -> Dict:
    import segfuse

    run_dir = os.path.join(out, f"{budget}_{arm}_seed{seed}")
    resume = os.path.isfile(os.path.join(run_dir, "last.pt"))  # a cut-short study continues where it stopped
    opts = dict(train_options, supervision=arm, seed=seed, run_dir=run_dir, resume=resume, progress=False,
                device=device)
    if budget == "iterations":
        opts.update(iterations=iterations)
    else:  # the schedule ends when the time is spent; the iteration cap is never the limit
        opts.update(max_minutes=minutes, iterations=10 ** 7)
    t0 = time.time()
    result = segfuse.train(**opts)
    train_s = time.time() - t0
    ev = segfuse.evaluate(result.run_dir, split="auto", hd95=False, device=device, overlays=False)
    split = os.path.basename(os.path.normpath(ev.predictions))[len("eval_"):]  # what split="auto" chose
    row = {"budget": budget, "supervision": arm, "seed": seed, "split": split,
           "iterations": int(result.metrics.get("iteration", 0)),
           "train_s": round(float(result.metrics.get("time_s", train_s)), 1)}
    row.update({f"dice_{s['name']}": s["dice_mean"] for s in ev.summary[:-1]})  # per class; the mean is last
    row["dice_mean"] = ev.mean_dice
    return row


def summarize(rows: List[Dict]) -> str:
    """One markdown table per budget: mean ± std over seeds of every Dice column, iterations and seconds."""
    keys = [k for k in rows[0] if k.startswith("dice_")]
    lines = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        sub = [r for r in rows if r["budget"] == budget]
        seeds = sorted({r["seed"] for r in sub})
        split = sub[0].get("split", "test")
        lines += [f"Equal {'iterations' if budget == 'iterations' else 'wall time'} (seeds {seeds}; held-out "
                  f"({split}) Dice, mean ± std over seeds):", "",
                  "| supervision | " + " | ".join(k[5:] for k in keys) + " | iterations | train s |",
                  "|---" * (len(keys) + 3) + "|"]
        for arm in dict.fromkeys(r["supervision"] for r in sub):
            r = [x for x in sub if x["supervision"] == arm]
            cells = [f"{np.mean([x[k] for x in r]):.3f} ± {np.std([x[k] for x in r]):.3f}" for k in keys]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {np.mean([x['iterations'] for x in r]):.0f} | "
                         f"{np.mean([x['train_s'] for x in r]):.0f} |")
        lines.append("")
    return "\n".join(lines)


def supervision_study(out: str = "results/supervision", *, arms: Sequence[str] = ARMS,
                      seeds: Sequence[int] = (0, 1, 2), iterations: Optional[int] = 80,
                      minutes: Optional[float] = None, dice_ce: str = "monai", device: str = "auto",
                      **train_options) -> StudyResult:
    """Run the study (see the module doc) and write ``out/runs.csv`` and ``out/summary.md``.

    Args:
        arms: supervisions to compare (``single``, ``deep``, ``lomix``).
        seeds: one run per arm, seed and budget.
        iterations: the equal-iterations budget (None: skip it).
        minutes: the equal-wall-time budget per run (None: skip it).
        dice_ce: the Dice + CE formulation every arm uses ("monai" or "lomix"; see ``segfuse train --help``).
        **train_options: the rest of the training options, shared by every run (model, data, spacing,
            batch_size, augment, ...; :class:`segfuse.training.TrainConfig` fields).
    """
    from segfuse.runs import write_csv

    if iterations is None and minutes is None:
        raise ValueError("give iterations, minutes or both (the two budgets)")
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"arms must be among {ARMS}, got {bad}")
    if dice_ce == "auto":
        raise ValueError("dice_ce: give one formulation for every arm (monai or lomix), not auto")
    os.makedirs(out, exist_ok=True)
    budgets = [b for b, v in (("iterations", iterations), ("minutes", minutes)) if v is not None]
    rows = []
    for budget in budgets:
        for seed in seeds:  # seed-major: a cut-short study still compares every arm
            for arm in arms:
                rows.append(_run_one(out, budget, arm, seed, iterations, minutes,
                                     dict(train_options, dice_ce=dice_ce), device))
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
                write_csv(rows, os.path.join(out, "runs.csv"))
    text = summarize(rows)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    return StudyResult(rows, text, out)
