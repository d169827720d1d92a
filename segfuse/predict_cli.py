"""``segfuse predict``: label maps for NIfTI images with a trained run; a thin command line over
:func:`segfuse.predict`.

Reads ``RUN/config.json`` (model, dims, patch, preprocessing) and a checkpoint, predicts every case of
``--input`` (an nnU-Net ``imagesTs``/``imagesTr`` folder of ``CASE_XXXX`` channel files) and writes
``OUTPUT/CASE.nii.gz`` with the input's affine and header. A case that fails (corrupt file, NaN voxels,
...) does not stop the batch: every failure is listed with its files and reason at the end and the exit
status is 1. Unused extra channel files are warned about.

Example::

    segfuse predict --run runs/quick --input ~/.cache/segfuse/synthetic3d_v3_seed0/imagesTs --output preds
"""
from __future__ import annotations

import argparse
import sys
import warnings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "examples:\n" + __doc__.split("Example::")[1].strip("\n").rstrip()
    p.add_argument("--run", required=True, help="run folder written by segfuse train")
    p.add_argument("--input", required=True, help="folder of CASE_0000.nii.gz (+_0001 ...) images")
    p.add_argument("--output", required=True, help="folder for CASE.nii.gz predictions")
    p.add_argument("--checkpoint", default="last", help="last | best | path to a .pt file (default last)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--tta", action="store_true", help="average over flips of every spatial axis")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (2D; default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args) -> int:
    """Exit status 0, or 1 when a case failed (the others are written)."""
    import torch

    from segfuse.prediction import predict
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = predict(args.run, args.input, args.output, checkpoint=args.checkpoint, overlap=args.overlap,
                         tta=args.tta, batch_size=args.batch_size, device=args.device)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    total = len(result.written) + len(result.failed)
    print(f"wrote {len(result.written)} of {total} predictions to {result.output} in {result.seconds:.1f} s")
    if result.failed:
        print(f"{len(result.failed)} of {total} cases failed:", file=sys.stderr)
        for f in result.failed:
            print(f"  {f.case_id} ({', '.join(f.files)}): {f.reason}", file=sys.stderr)
        return 1
    return 0
