"""Per-class Dice and HD95 (mm, from the NIfTI voxel spacing): :func:`evaluate`, exported as
``segfuse.evaluate`` and behind ``segfuse evaluate``.

Two ways in:

* ``pred=DIR, labels=DIR``: compare ``DIR/CASE.nii.gz`` files (every label file needs a prediction;
  shapes and affines must agree).
* ``run=RUN``: predict the run's held-out data first (``split="test"``: ``imagesTs`` + ``labelsTs``;
  ``"val"``: the validation cases/slices used during training; ``"auto"``: test when the dataset has
  ``labelsTs``), writing NIfTI predictions to ``RUN/eval_<split>/``, then compare.

Every prediction is written and scored in its input image's own grid, with its affine and header: the
network's probabilities are resampled back from the run's grid (``--spacing``) before the argmax, as
``segfuse predict`` does. For a 2D run's ``slices`` split, the whole volume is predicted (and written) and
the input slices whose nearest slice of the run's grid was held out in training are scored. Voxels of the
dataset's ignore label are scored for no class. Writes ``metrics.csv`` (one row per case and class) and
``summary.csv`` next to the predictions (or to ``out``). Conventions: see :mod:`segfuse.metrics`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` measured: ``rows`` (one per case and class: ``case, class, name, dice, hd95``),
    ``summary`` (one per foreground class, then the mean), the folder of the CSVs and, with a run, the
    folder of the predictions it wrote (else None)."""
    rows: List[Dict]
    summary: List[Dict]
    out_dir: str
    predictions: Optional[str] = None

    @property
    def mean_dice(self) -> float:
        """The summary's "mean (foreground)" Dice."""
        return float(self.summary[-1]["dice_mean"])


def evaluate_arrays(cases: List[tuple], num_classes: int, class_names: Optional[List[str]] = None,
                    include_hd95: bool = True, hd95_convention: str = "medpy") -> List[Dict]:
    """``cases``: (case_id, pred ``[*S]``, label ``[*S]``, spacing[, mask ``[*S]`` of the voxels to score or
    None]). Returns rows ``{case, class, name, dice, hd95}`` (``hd95_convention``: :func:`segfuse.metrics.hd95`)."""
    from segfuse.metrics import per_class_metrics
    names = class_names or [str(c) for c in range(num_classes)]
    rows = []
    for case in cases:
        cid, pred, lab, spacing = case[:4]
        mask = case[4] if len(case) > 4 else None
        m = per_class_metrics(pred, lab, num_classes, spacing, include_hd95, mask, hd95_convention)
        for c, vals in m.items():
            rows.append({"case": cid, "class": c, "name": names[c], **vals})
    return rows


def summarize(rows: List[Dict], num_classes: int, names: List[str]) -> List[Dict]:
    """Per foreground class: Dice mean and std over cases, HD95 mean, case counts; then their mean."""
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


def format_table(summary: List[Dict]) -> str:
    """The summary as a text table (class, Dice, ± std, HD95, cases)."""
    lines = [f"{'class':<22}{'Dice':>8}{'± std':>8}{'HD95 mm':>10}{'cases':>7}"]
    for s in summary:
        std = "" if np.isnan(s["dice_std"]) else f"{s['dice_std']:.4f}"
        hd = "" if np.isnan(s["hd95_mean"]) else f"{s['hd95_mean']:.2f}"
        lines.append(f"{s['name']:<22}{s['dice_mean']:>8.4f}{std:>8}{hd:>10}{s['n_cases']:>7}")
    return "\n".join(lines)


def load_folder_pairs(pred_dir: str, label_dir: str) -> List[tuple]:
    """(case_id, pred, label, spacing) of every label file in ``label_dir`` and its prediction in ``pred_dir``."""
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
    for d, flag in ((pred_dir, "pred"), (label_dir, "labels")):
        if not d or not os.path.isdir(d):
            raise MissingFileError(f"{flag} {d!r} is not a folder")
    files = sorted(f for f in os.listdir(label_dir) if f.endswith((".nii.gz", ".nii")))
    if not files:
        raise MissingFileError(f"labels {label_dir!r} holds no .nii.gz files")
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


def predict_held_out(run, split: str = "auto", checkpoint: str = "last", tta: bool = False,
                     device: str = "cpu") -> Tuple[List[tuple], str, Dict[str, np.ndarray]]:
    """Predict a run's held-out data into ``RUN/eval_<split>/``, each case in its input image's grid, affine and
    header. ``split``: ``"test"`` (``imagesTs`` + ``labelsTs``), ``"val"`` (the validation split of training) or
    ``"auto"`` (test when the dataset has ``labelsTs``).

    Returns ((case_id, pred, label, spacing, mask) list, that folder, ``{case_id: image}``), all in the input
    grid: ``mask`` holds the voxels to score (not the ignore label; for a ``slices`` split, the input slices
    nearest to the held-out slices) or is None; the images (raw, ``[C, X, Y, Z]``) are for the overlays."""
    from segfuse.data.errors import MissingFileError
    from segfuse.data.nnunet import save_nifti
    from segfuse.metrics import scored_mask
    from segfuse.prediction import probabilities_in_input_grid
    if split not in ("auto", "test", "val"):
        raise ValueError(f"split must be auto, test or val, got {split!r}")
    model = run.load_model(checkpoint, device)
    ds = run.dataset()
    if split == "auto":
        split = "test" if ds.case_ids("Ts") and ds.label_file(ds.case_ids("Ts")[0], "Ts") else "val"
    out_dir = os.path.join(run.folder, f"eval_{split}")
    os.makedirs(out_dir, exist_ok=True)
    pre, ignore = run.preprocess(), run.ignore_label
    cases, images = [], {}

    def add(case, image, region=None):
        probs = probabilities_in_input_grid(run, model, image, case.image.shape[1:], tta=tta, device=device)
        pred = probs.argmax(0).astype(np.uint8)
        save_nifti(os.path.join(out_dir, case.case_id + ".nii.gz"), pred, case.affine, case.header, np.uint8)
        cases.append((case.case_id, pred, case.label, case.spacing, scored_mask(case.label, ignore, region)))
        images[case.case_id] = case.image

    if split == "test":
        ids = ds.case_ids("Ts")
        if not ids:
            raise MissingFileError(f"split test: {ds.root}/imagesTs holds no cases")
        for cid in ids:
            if ds.label_file(cid, "Ts") is None:
                raise MissingFileError(f"case {cid!r}: split test needs labelsTs/{cid}{ds.file_ending}")
            case = ds.load_case(cid, "Ts")
            add(case, pre(case.image, None, case.spacing)[0])
    else:
        for held in run.validation_cases():
            add(held.case, held.image, held.scored())
    return cases, out_dir, images


def _label_info(dataset_json: str) -> Tuple[Optional[List[str]], Optional[int], Optional[Dict]]:
    """(class names ordered by value, ignore label, ``{value: colour}``) from a ``dataset.json``
    (:func:`segfuse.overlays.read_dataset_classes`; (None, None, None) without the file); "ignore" is not a class."""
    from segfuse.overlays import read_dataset_classes
    if not os.path.isfile(dataset_json):
        return None, None, None
    by_value, colors = read_dataset_classes(dataset_json)
    ignore = next((v for v, n in by_value.items() if n == "ignore"), None)
    return [n for v, n in sorted(by_value.items()) if n != "ignore"], ignore, colors


def evaluate(run=None, *, pred: Optional[str] = None, labels: Optional[str] = None, split: str = "auto",
             checkpoint: str = "last", tta: bool = False, num_classes: Optional[int] = None, hd95: bool = True,
             out: Optional[str] = None, device: str = "auto", overlays: bool = True,
             hd95_convention: str = "medpy") -> EvaluationResult:
    """Per-case, per-class Dice (and HD95) of predictions against labels, in the labels' grid (voxels of the
    ignore label scored for no class); writes ``metrics.csv``,
    ``summary.csv`` and (``overlays``) one PNG per case in ``overlays/`` (:mod:`segfuse.overlays`: a few
    representative slices, the image with ground-truth (solid) and prediction (dashed) contours in per-class
    colours from ``dataset.json``; contours on grey with ``pred``/``labels``, which have no images).

    Args:
        run: a run folder (path) or :class:`segfuse.runs.Run`: predict its held-out data (``split``,
            ``checkpoint``, ``tta``, ``device``) into ``RUN/eval_<split>/``, then compare. Or give:
        pred, labels: folders of ``CASE.nii.gz`` predictions and references.
        num_classes: with ``pred``/``labels``: classes incl. background (default: from the
            ``dataset.json`` beside ``labels``, else max label + 1).
        hd95: also compute HD95 (mm); False: Dice only (faster).
        hd95_convention: "medpy" (default: both directions pooled, as medpy's ``hd95``; one empty mask: the image
            diagonal) or "monai" (MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger one-way
            percentile; one empty mask: NaN, left out of the means).
        out: folder for the CSVs and ``overlays/`` (default: the predictions' folder).
        overlays: write the per-case overlay PNGs.

    Example:
        >>> segfuse.evaluate("runs/quick").mean_dice
        >>> segfuse.evaluate(pred="preds", labels="data/labelsTs").summary
    """
    from segfuse.metrics import HD95_CONVENTIONS
    from segfuse.runs import as_run, write_csv
    if hd95_convention not in HD95_CONVENTIONS:
        raise ValueError(f"hd95_convention must be one of {HD95_CONVENTIONS}, got {hd95_convention!r}")
    if run is not None:
        if pred or labels:
            raise ValueError("give either run or pred/labels, not both")
        from segfuse.prediction import resolve_device
        run = as_run(run)
        cases, pred_dir, images = predict_held_out(run, split, checkpoint, tta, resolve_device(device))
        k, names, predictions, ignore = run.num_classes, run.class_names, pred_dir, run.ignore_label
        colors = _label_info(os.path.join(run.dataset().root, "dataset.json"))[2]
    else:
        if not (pred and labels):
            raise ValueError("give pred and labels (or a run)")
        from segfuse.metrics import scored_mask
        names, ignore, colors = _label_info(os.path.join(os.path.dirname(os.path.abspath(labels)), "dataset.json"))
        cases = [(cid, p, lab, sp, scored_mask(lab, ignore))
                 for cid, p, lab, sp in load_folder_pairs(os.fspath(pred), os.fspath(labels))]
        pred_dir, predictions, images = os.fspath(pred), None, None
        k = num_classes or (len(names) if names else int(max(max(c[1].max(), c[2].max()) for c in cases)) + 1)
        names = names if names and len(names) == k else [str(c) for c in range(k)]
    out_dir = os.fspath(out) if out else pred_dir
    rows = evaluate_arrays(cases, k, names, include_hd95=hd95, hd95_convention=hd95_convention)
    summary = summarize(rows, k, names)
    write_csv(rows, os.path.join(out_dir, "metrics.csv"))
    write_csv(summary, os.path.join(out_dir, "summary.csv"))
    if overlays:
        from segfuse.overlays import write_evaluation_overlays
        write_evaluation_overlays(cases, out_dir, images=images, class_names=names, class_colors=colors,
                                  ignore_label=ignore)
    return EvaluationResult(rows, summary, out_dir, predictions)
