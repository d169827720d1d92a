"""``segfuse predict``: label maps for NIfTI images with a trained run.

Reads ``RUN/config.json`` (model, dims, patch, preprocessing) and a checkpoint, predicts every case of
``--input`` (an nnU-Net ``imagesTs``/``imagesTr`` folder of ``CASE_XXXX`` channel files, or a dataset
folder + ``--split``), and writes ``OUTPUT/CASE.nii.gz`` with the input's affine and header. A case
that fails (corrupt file, NaN voxels, ...) does not stop the batch: every failure is listed with its
file and reason at the end and the exit status is 1. Unused extra channel files are warned about.

Example::

    segfuse predict --run runs/quick --input ~/.cache/segfuse/synthetic3d_seed0/imagesTs --output preds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by segfuse train")
    p.add_argument("--input", required=True, help="folder of CASE_0000.nii.gz (+_0001 ...) images")
    p.add_argument("--output", required=True, help="folder for CASE.nii.gz predictions")
    p.add_argument("--checkpoint", default="last", help="last | best | path to a .pt file (default last)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    p.add_argument("--tta", action="store_true", help="average over flips of every spatial axis")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (2D)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)


def load_run(run_dir: str, checkpoint: str = "last", device="cpu"):
    """Returns (model in eval mode, config dict) of a run folder."""
    from segfuse.train.checkpoint import load_checkpoint
    from segfuse.train.factory import DEEP_SUPERVISIONS, build_model
    cfg_path = os.path.join(run_dir, "config.json")
    from segfuse.data.errors import DataError, MissingFileError
    if not os.path.isfile(cfg_path):
        raise MissingFileError(f"--run {run_dir!r}: {cfg_path} not found (not a segfuse train run folder)")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"--run {run_dir!r}: {cfg_path} is damaged (not valid JSON): {e}") from e
    ck = checkpoint if checkpoint.endswith(".pt") else os.path.join(run_dir, f"{checkpoint}.pt")
    state = load_checkpoint(ck, map_location=device)
    model = build_model(cfg["model"], cfg["dims"], len(cfg["channel_names"]), cfg["num_classes"],
                        deep_supervision=cfg["supervision"] in DEEP_SUPERVISIONS, **cfg.get("model_kwargs", {}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def find_cases(folder: str, num_channels: int, file_ending: str = ".nii.gz") -> Dict[str, List[str]]:
    """``{case_id: [channel files]}`` of ``folder``; a case missing a channel file is an error.

    Channel files beyond ``num_channels`` (e.g. ``CASE_0001`` for a 1-channel run) are not used; each
    gives a warning naming the file.
    """
    from segfuse.data.errors import MissingFileError
    if not os.path.isdir(folder):
        raise MissingFileError(f"--input {folder!r} is not a folder")
    pat = re.compile(r"^(.*)_(\d{4})" + re.escape(file_ending) + "$")
    cases: Dict[str, set] = {}
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            cases.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not cases:
        raise MissingFileError(f"--input {folder!r}: no CASE_XXXX{file_ending} files")
    out = {}
    for cid, chans in sorted(cases.items()):
        missing = sorted(set(range(num_channels)) - chans)
        if missing:
            raise MissingFileError(f"case {cid!r}: channel file {cid}_{missing[0]:04d}{file_ending} "
                                   f"is missing in {folder}")
        for c in sorted(chans - set(range(num_channels))):
            warnings.warn(f"case {cid!r}: {os.path.join(folder, f'{cid}_{c:04d}{file_ending}')} is ignored: "
                          f"the run was trained with {num_channels} channel"
                          f"{'' if num_channels == 1 else 's'} (_0000 .. _{num_channels - 1:04d})",
                          UserWarning, stacklevel=2)
        out[cid] = [os.path.join(folder, f"{cid}_{c:04d}{file_ending}") for c in range(num_channels)]
    return out


def predict_case(model, cfg, files: List[str], case_id: str, overlap=0.5, tta=False, batch_size=8,
                 device="cpu"):
    """Predict one case. Returns (label map ``[X, Y, Z]`` uint8 in the input grid, the Case)."""
    from segfuse.data.nnunet import load_case_files
    from segfuse.data.preprocess import resize
    from segfuse.inference import predict_volume
    from segfuse.train.data_setup import Preprocess
    case = load_case_files(case_id, files, None)
    pre = Preprocess(cfg["channel_names"], tuple(cfg["ct_window"]), cfg.get("spacing"))
    image, _, _ = pre(case.image, None, case.spacing)
    probs = predict_volume(model, image, cfg["dims"], cfg["patch_size"], cfg["num_classes"], overlap=overlap,
                           tta=tta, batch_size=batch_size, device=device)
    if probs.shape[1:] != case.image.shape[1:]:   # resampled: back to the original grid
        probs = np.stack([resize(p, case.image.shape[1:], order=1) for p in probs])
    return probs.argmax(0).astype(np.uint8), case


def run(args) -> int:
    """Predict every case that can be predicted; a case that fails (unreadable or corrupt file, NaN
    voxels, shape mismatch between channels, ...) is reported with its file and reason at the end and
    makes the exit status 1, but does not stop the others."""
    from segfuse.data.nnunet import save_nifti
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_run(args.run, args.checkpoint, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cases = find_cases(args.input, len(cfg["channel_names"]))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    os.makedirs(args.output, exist_ok=True)
    t0 = time.time()
    failed: List[Tuple[str, List[str], str]] = []
    for cid, files in cases.items():
        try:
            pred, case = predict_case(model, cfg, files, cid, args.overlap, args.tta, args.batch_size, device)
            save_nifti(os.path.join(args.output, cid + ".nii.gz"), pred, case.affine, case.header, np.uint8)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:   # noqa: BLE001 - reported below with the case's files; the batch goes on
            failed.append((cid, files, f"{type(e).__name__}: {e}"))
            print(f"case {cid!r} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    done = len(cases) - len(failed)
    print(f"wrote {done} of {len(cases)} predictions to {args.output} in {time.time() - t0:.1f} s")
    if failed:
        print(f"{len(failed)} of {len(cases)} cases failed:", file=sys.stderr)
        for cid, files, reason in failed:
            print(f"  {cid} ({', '.join(files)}): {reason}", file=sys.stderr)
        return 1
    return 0
