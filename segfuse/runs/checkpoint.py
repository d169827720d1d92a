"""A run folder's files, written atomically: write to a temporary file in the same folder, then rename.

Checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`), ``config.json`` (:func:`write_json`) and
CSV tables (:func:`write_csv`).

Temporary files are named ``.NAME.XXXXXXXX.tmp``; a process killed mid-write leaves one behind, and
:func:`remove_stale_temp_files` (called by the trainer at start, under the run-folder lock) deletes
them. Files get the permissions of an ordinary ``open()`` under the process umask (not mkstemp's 0600).
"""
from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from typing import Any, Dict, List

import torch

from segfuse.data.errors import CheckpointError, MissingFileError

RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.csv")
_STALE = re.compile(r"^\.(" + "|".join(re.escape(f) for f in RUN_FILES) + r")\.[A-Za-z0-9_]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """``torch.save(state)`` to ``path`` atomically (a kill mid-write leaves the old file intact)."""
    _atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """The state saved by :func:`save_checkpoint`.

    Raises:
        MissingFileError (a FileNotFoundError): no such file.
        CheckpointError (a ValueError): truncated, random bytes or not a checkpoint dict; names the file.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:    # truncated zip (RuntimeError), random bytes (UnpicklingError), EOFError ...
        raise CheckpointError(f"checkpoint {path} is damaged (truncated or not a torch checkpoint): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: holds a {type(state).__name__}, not a state dict")
    return state


def remove_stale_temp_files(folder: str) -> List[str]:
    """Delete ``.last.pt.*.tmp`` (and the other run files' temporaries) left by a killed write; returns
    the removed paths. Only call it while holding the run-folder lock (no other writer)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if _STALE.match(name):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def write_json(obj, path: str) -> None:
    """``obj`` as indented JSON (non-JSON values as their ``str``)."""
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
    """Rows (dicts) as CSV; columns are the union of keys in first-seen order."""
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def write(f):
        import io
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        f.write(buf.getvalue().encode())
    _atomic(path, write)
