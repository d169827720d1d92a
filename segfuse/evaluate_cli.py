"""``segfuse evaluate``: per-class Dice and HD95 (mm, from the NIfTI voxel spacing).

Two ways in:

* ``--pred DIR --labels DIR``: compare ``DIR/CASE.nii.gz`` files (every label file needs a
  prediction; shapes and affines must agree).
* ``--run RUN``: predict the run's held-out data first (``--split test``: ``imagesTs``+``labelsTs``;
  ``val``: the validation cases/slices used during training; ``auto``: test when the dataset has
  ``labelsTs``), writing NIfTI predictions to ``RUN/eval_<split>/``, then compare.

Writes ``metrics.csv`` (one row per case and class) and ``summary.csv`` next to the predictions (or
``--out``), and prints a per-class table. Conventions: see :mod:`segfuse.metrics`.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", help="folder of predicted CASE.nii.gz")
    p.add_argument("--labels", help="folder of reference CASE.nii.gz")
    p.add_argument("--run", help="run folder: predict its held-out data, then evaluate")
    p.add_argument("--split", default="auto", choices=("auto", "test", "val"))
    p.add_argument("--checkpoint", default="last", help="with --run: last | best | path")
    p.add_argument("--tta", action="store_true", help="with --run: test-time flips")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes incl. background (default: from dataset.json next to --labels, or max label + 1)")
    p.add_argument("--no-hd95", action="store_true", help="Dice only (faster)")
    p.add_argument("--out", default=None, help="folder for metrics.csv / summary.csv")
    p.add_argument("--device", default="auto")


def evaluate_arrays(cases: List[tuple], num_classes: int, class_names: Optional[List[str]] = None,
                    include_hd95: bool = True) -> List[Dict]:
    """``cases``: (case_id, pred ``[*S]``, label ``[*S]``, spacing). Returns rows
    ``{case, class, name, dice, hd95}``."""
    from segfuse.metrics import per_class_metrics
    names = class_names or [str(c) for c in range(num_classes)]
    rows = []
    for cid, pred, lab, spacing in cases:
        m = per_class_metrics(pred, lab, num_classes, spacing, include_hd95)
        for c, vals in m.items():
            rows.append({"case": cid, "class": c, "name": names[c], **vals})
    return rows


def summarize(rows: List[Dict], num_classes: int, names: List[str]) -> List[Dict]:
    from segfuse.metrics import nanmean
    out = []
    for c in range(1, num_classes):
        r = [x for x in rows if x["class"] == c]
        d = [x["dice"] for x in r]
        out.append({"class": c, "name": names[c], "dice_mean": nanmean(d),
                    "dice_std": float(np.nanstd(d)) if np.isfinite(d).any() else float("nan"),
                    "hd95_mean": nanmean(x.get("hd95", float("nan")) for x in r),
                    "n_cases": len(r), "n_empty": int(np.isnan(d).sum())})
    out.append({"class": "mean", "name": "mean (foreground)",
                "dice_mean": nanmean(s["dice_mean"] for s in out),
                "dice_std": float("nan"), "hd95_mean": nanmean(s["hd95_mean"] for s in out),
                "n_cases": len({x["case"] for x in rows}), "n_empty": sum(s["n_empty"] for s in out)})
    return out


def print_table(summary: List[Dict]) -> None:
    print(f"{'class':<22}{'Dice':>8}{'± std':>8}{'HD95 mm':>10}{'cases':>7}")
    for s in summary:
        std = "" if np.isnan(s["dice_std"]) else f"{s['dice_std']:.4f}"
        hd = "" if np.isnan(s["hd95_mean"]) else f"{s['hd95_mean']:.2f}"
        print(f"{s['name']:<22}{s['dice_mean']:>8.4f}{std:>8}{hd:>10}{s['n_cases']:>7}")


def _load_folder_pairs(pred_dir: str, label_dir: str):
    import nibabel as nib
    from segfuse.data.errors import DataError, MissingFileError
    from segfuse.data.nnunet import AFFINE_ATOL

    def read(path, cid):
        try:
            img = nib.load(path)
            return img, np.asanyarray(img.dataobj)
        except Exception as e:    # truncated gzip, random bytes, ...: name the file
            raise DataError(f"case {cid!r}: cannot read {path} (damaged or not a NIfTI file): "
                            f"{type(e).__name__}: {e}") from e
    for d, flag in ((pred_dir, "--pred"), (label_dir, "--labels")):
        if not d or not os.path.isdir(d):
            raise MissingFileError(f"{flag} {d!r} is not a folder")
    files = sorted(f for f in os.listdir(label_dir) if f.endswith((".nii.gz", ".nii")))
    if not files:
        raise MissingFileError(f"--labels {label_dir!r} holds no .nii.gz files")
    out = []
    for f in files:
        cid = f[:-7] if f.endswith(".nii.gz") else f[:-4]
        pp = os.path.join(pred_dir, f)
        if not os.path.isfile(pp):
            raise MissingFileError(f"case {cid!r}: no prediction {pp}")
        (li, lab), (pi, pred) = read(os.path.join(label_dir, f), cid), read(pp, cid)
        if lab.shape != pred.shape:
            raise DataError(f"case {cid!r}: prediction {pp} has shape {pred.shape}, label has {lab.shape}")
        if not np.allclose(li.affine, pi.affine, atol=AFFINE_ATOL):
            raise DataError(f"case {cid!r}: affine of prediction {pp} differs from its label")
        out.append((cid, np.rint(pred).astype(np.int16), np.rint(lab).astype(np.int16),
                    tuple(float(z) for z in li.header.get_zooms()[:lab.ndim])))
    return out


def _predict_run(args, device):
    """Predict the run's held-out data; returns (cases, out_dir, num_classes, names)."""
    from segfuse.data import NnUNetDataset
    from segfuse.data.nnunet import save_nifti
    from segfuse.inference import predict_volume
    from segfuse.predict_cli import load_run, predict_case
    from segfuse.train.data_setup import Preprocess, load_volumes, split_data
    model, cfg = load_run(args.run, args.checkpoint, device)
    ds = NnUNetDataset(cfg["data_dir"])
    split = args.split
    if split == "auto":
        split = "test" if ds.case_ids("Ts") and ds.label_file(ds.case_ids("Ts")[0], "Ts") else "val"
    out_dir = os.path.join(args.run, f"eval_{split}")
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    if split == "test":
        ids = ds.case_ids("Ts")
        if not ids:
            raise FileNotFoundError(f"--split test: {cfg['data_dir']}/imagesTs holds no cases")
        for cid in ids:
            lf = ds.label_file(cid, "Ts")
            if lf is None:
                raise FileNotFoundError(f"case {cid!r}: --split test needs labelsTs/{cid}{ds.file_ending}")
            pred, case = predict_case(model, cfg, ds.image_files(cid, "Ts"), cid, tta=args.tta, device=device)
            lab = ds.load_case(cid, "Ts").label
            save_nifti(os.path.join(out_dir, cid + ".nii.gz"), pred, case.affine, case.header, np.uint8)
            cases.append((cid, pred, lab, case.spacing))
    else:
        if cfg["val_split_resolved"] == "none":
            raise ValueError(f"--split val: run {args.run} was trained without a validation split")
        pre = Preprocess(cfg["channel_names"], tuple(cfg["ct_window"]), cfg.get("spacing"))
        vols = load_volumes(ds, ds.case_ids("Tr"), pre)
        _, val = split_data(vols, cfg["dims"], cfg["val_split_resolved"], cfg["holdout_every"])
        for v in val:
            probs = predict_volume(model, v.image, cfg["dims"], cfg["patch_size"], cfg["num_classes"],
                                   tta=args.tta, device=device)
            pred = probs.argmax(0).astype(np.uint8)
            save_nifti(os.path.join(out_dir, v.case_id + ".nii.gz"), pred, np.diag(list(v.spacing) + [1.0]))
            cases.append((v.case_id, pred, v.label, v.spacing))
    return cases, out_dir, cfg["num_classes"], cfg["class_names"]


def run(args) -> int:
    import torch
    from segfuse.train.checkpoint import write_csv
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.run:
        if args.pred or args.labels:
            raise ValueError("give either --run or --pred/--labels, not both")
        cases, out_dir, k, names = _predict_run(args, device)
        print(f"predicted {len(cases)} held-out case(s) into {out_dir}")
    else:
        if not (args.pred and args.labels):
            raise ValueError("give --pred and --labels (or --run)")
        cases = _load_folder_pairs(args.pred, args.labels)
        out_dir = args.pred
        names = None
        meta = os.path.join(os.path.dirname(os.path.abspath(args.labels)), "dataset.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                labels = json.load(f).get("labels", {})
            names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        k = args.num_classes or (len(names) if names else
                                 int(max(max(p.max(), l.max()) for _, p, l, _ in cases)) + 1)
        names = names if names and len(names) == k else [str(c) for c in range(k)]
    out = args.out or out_dir
    rows = evaluate_arrays(cases, k, names, include_hd95=not args.no_hd95)
    summary = summarize(rows, k, names)
    write_csv(rows, os.path.join(out, "metrics.csv"))
    write_csv(summary, os.path.join(out, "summary.csv"))
    print_table(summary)
    print(f"per-case metrics: {os.path.join(out, 'metrics.csv')}")
    return 0
