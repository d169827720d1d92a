"""Atomic checkpoint/CSV/JSON writing: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from typing import Any, Dict, List

import torch


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location=map_location, weights_only=False)


def write_json(obj, path: str) -> None:
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
