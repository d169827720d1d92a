"""Label maps for NIfTI images with a trained run: :func:`predict`, exported as ``segfuse.predict`` and
behind ``segfuse predict``.

A run folder (:class:`segfuse.runs.Run`) gives the model, the preprocessing and the patch size; every
case of an input folder (nnU-Net ``CASE_XXXX`` channel files) is predicted by sliding window and
written as ``OUTPUT/CASE.nii.gz`` with the input's affine and header. A case that fails (corrupt file,
NaN voxels, ...) does not stop the batch: it is listed in the result with its files and reason.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from typing import Dict, List, Union

import numpy as np


@dataclasses.dataclass
class CaseFailure:
    """A case :func:`predict` could not predict: its id, its channel files and the reason."""
    case_id: str
    files: List[str]
    reason: str


@dataclasses.dataclass
class PredictResult:
    """What :func:`predict` did: ``written`` ``{case_id: output file}``, ``failed`` cases, wall time."""
    output: str
    written: Dict[str, str]
    failed: List[CaseFailure]
    seconds: float


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def find_cases(folder: str, num_channels: int, file_ending: str = ".nii.gz") -> Dict[str, List[str]]:
    """``{case_id: [channel files]}`` of ``folder``; a case missing a channel file is an error.

    Channel files beyond ``num_channels`` (e.g. ``CASE_0001`` for a 1-channel run) are not used; each
    gives a warning naming the file.
    """
    from segfuse.data.errors import MissingFileError
    if not os.path.isdir(folder):
        raise MissingFileError(f"input {folder!r} is not a folder")
    pat = re.compile(r"^(.*)_(\d{4})" + re.escape(file_ending) + "$")
    cases: Dict[str, set] = {}
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            cases.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not cases:
        raise MissingFileError(f"input {folder!r}: no CASE_XXXX{file_ending} files")
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


def probabilities_in_input_grid(run, model, image: np.ndarray, input_shape, overlap: float = 0.5, tta: bool = False,
                                batch_size: int = 8, device="cpu") -> np.ndarray:
    """Softmax probabilities ``[K, *input_shape]`` of a preprocessed ``image [C, *S']`` (``run.preprocess()``'s
    output): predicted on the run's grid, then resampled back (linear, per class) to the input grid when the
    run resamples (``--spacing``), as nnU-Net does before the argmax."""
    from segfuse.data.preprocess import resize
    from segfuse.inference import predict_volume
    probs = predict_volume(model, image, run.dims, run.patch_size, run.num_classes, overlap=overlap,
                           tta=tta, batch_size=batch_size, device=device)
    input_shape = tuple(int(n) for n in input_shape)
    if probs.shape[1:] != input_shape:   # resampled: back to the original grid
        probs = np.stack([resize(p, input_shape, order=1) for p in probs])
    return probs


def predict_case(run, model, files: List[str], case_id: str, overlap: float = 0.5, tta: bool = False,
                 batch_size: int = 8, device="cpu"):
    """Predict one case with ``model`` (from ``run.load_model``). Returns (label map ``[X, Y, Z]`` uint8 in
    the input grid, the :class:`segfuse.data.Case`)."""
    from segfuse.data.nnunet import load_case_files
    case = load_case_files(case_id, files, None)
    image, _, _ = run.preprocess()(case.image, None, case.spacing)
    probs = probabilities_in_input_grid(run, model, image, case.image.shape[1:], overlap, tta, batch_size, device)
    return probs.argmax(0).astype(np.uint8), case


def predict(run, input: Union[str, os.PathLike], output: Union[str, os.PathLike], *, checkpoint: str = "last",
            overlap: float = 0.5, tta: bool = False, batch_size: int = 8, device: str = "auto") -> PredictResult:
    """Predict every case of ``input`` with a trained run and write ``output/CASE.nii.gz`` (uint8).

    Args:
        run: a run folder (path) or a :class:`segfuse.runs.Run`.
        input: folder of ``CASE_0000.nii.gz`` (+ ``_0001`` ... for more channels) images.
        output: folder for the predictions (created).
        checkpoint: ``"last"`` | ``"best"`` | a path to a ``.pt`` file.
        overlap: sliding-window overlap in [0, 1).
        tta: average the softmax over flips of every spatial axis.
        batch_size: slices per forward pass (2D runs).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...

    Returns:
        :class:`PredictResult`. A case that fails (unreadable file, NaN voxels, channels that disagree)
        is in ``failed`` and does not stop the others; unused extra channel files give a UserWarning.

    Example:
        >>> result = segfuse.predict("runs/quick", "data/imagesTs", "preds")
    """
    from segfuse.data.nnunet import save_nifti
    from segfuse.runs import as_run
    run = as_run(run)
    device = resolve_device(device)
    model = run.load_model(checkpoint, device)
    cases = find_cases(os.fspath(input), len(run.config["channel_names"]))
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    t0 = time.time()
    written, failed = {}, []
    for cid, files in cases.items():
        try:
            pred, case = predict_case(run, model, files, cid, overlap, tta, batch_size, device)
            path = os.path.join(output, cid + ".nii.gz")
            save_nifti(path, pred, case.affine, case.header, np.uint8)
            written[cid] = path
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:   # noqa: BLE001 - reported with the case's files; the batch goes on
            failed.append(CaseFailure(cid, files, f"{type(e).__name__}: {e}"))
    return PredictResult(output, written, failed, time.time() - t0)
