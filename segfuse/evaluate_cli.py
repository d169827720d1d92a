"""``segfuse evaluate``: per-class Dice and HD95 (mm, from the NIfTI voxel spacing); a thin command line
over :func:`segfuse.evaluate`.

Two ways in:

* ``--pred DIR --labels DIR``: compare ``DIR/CASE.nii.gz`` files (every label file needs a
  prediction; shapes and affines must agree).
* ``--run RUN``: predict the run's held-out data first (``--split test``: ``imagesTs``+``labelsTs``;
  ``val``: the validation cases/slices used during training; ``auto``: test when the dataset has
  ``labelsTs``), writing NIfTI predictions to ``RUN/eval_<split>/``, then compare.

Writes ``metrics.csv`` (one row per case and class) and ``summary.csv`` next to the predictions (or
``--out``), and prints a per-class table. Conventions: see :mod:`segfuse.metrics`.

Examples::

    segfuse evaluate --run runs/quick
    segfuse evaluate --pred preds --labels DATASET/labelsTs
"""
from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n" + __doc__.split("Examples::")[1].strip("\n").rstrip()
    p.add_argument("--pred", help="folder of predicted CASE.nii.gz")
    p.add_argument("--labels", help="folder of reference CASE.nii.gz")
    p.add_argument("--run", help="run folder: predict its held-out data, then evaluate")
    p.add_argument("--split", default="auto", choices=("auto", "test", "val"), help="with --run (default auto)")
    p.add_argument("--checkpoint", default="last", help="with --run: last | best | path (default last)")
    p.add_argument("--tta", action="store_true", help="with --run: test-time flips")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes incl. background (default: from dataset.json next to --labels, or max label + 1)")
    p.add_argument("--no-hd95", action="store_true", help="Dice only (faster)")
    p.add_argument("--hd95-convention", default="medpy", choices=("medpy", "monai"),
                   help="medpy: both directions' distances pooled, one empty mask = image diagonal; monai: the "
                        "larger one-way 95th percentile, one empty mask = NaN (default medpy)")
    p.add_argument("--no-overlays", action="store_true",
                   help="skip the per-case overlay PNGs (OUT/overlays/CASE.png: image, ground truth and prediction contours)")
    p.add_argument("--out", default=None, help="folder for metrics.csv / summary.csv (default: the predictions')")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def run(args) -> int:
    from segfuse.evaluation import evaluate, format_table
    if args.run and (args.pred or args.labels):
        raise ValueError("give either --run or --pred/--labels, not both")
    if not args.run and not (args.pred and args.labels):
        raise ValueError("give --pred and --labels (or --run)")
    result = evaluate(args.run, pred=args.pred, labels=args.labels, split=args.split, checkpoint=args.checkpoint,
                      tta=args.tta, num_classes=args.num_classes, hd95=not args.no_hd95, out=args.out,
                      device=args.device, overlays=not args.no_overlays, hd95_convention=args.hd95_convention)
    if result.predictions:
        print(f"predicted {len({r['case'] for r in result.rows})} held-out case(s) into {result.predictions}")
    print(format_table(result.summary))
    print(f"per-case metrics: {os.path.join(result.out_dir, 'metrics.csv')}"
          + ("" if args.no_overlays else f"; overlays: {os.path.join(result.out_dir, 'overlays')}"))
    return 0
