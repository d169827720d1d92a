"""segfuse.runs: the run folder API shared by train, predict and evaluate.

:class:`Run` opens a folder written by ``segfuse train`` (config, model, preprocessing, checkpoints,
validation split); :mod:`segfuse.runs.checkpoint` writes and reads its files atomically.
"""
from .checkpoint import load_checkpoint, save_checkpoint, write_csv, write_json
from .folder import CHECKPOINTS, DEEP_SUPERVISIONS, SUPERVISIONS, Run, as_run, read_config

__all__ = ["Run", "as_run", "read_config", "CHECKPOINTS", "SUPERVISIONS", "DEEP_SUPERVISIONS",
           "load_checkpoint", "save_checkpoint", "write_csv", "write_json"]
