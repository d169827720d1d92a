"""Errors a user can cause (bad data, a busy or occupied run folder, a damaged checkpoint).

Each is also a standard exception (``ValueError``, ``FileNotFoundError``, ...), so callers that catch
those keep working; ``segfuse`` (the command line) prints a :class:`UserError` as one line on stderr
and exits 2 instead of showing a traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An error in what the user gave us (data, paths, options), not a bug: reported in one line."""


class DataError(UserError, ValueError):
    """A dataset file or dataset.json is malformed, unreadable or holds values it must not."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed to does not exist."""


class RunFolderExists(UserError, FileExistsError):
    """The run folder already holds a run and ``--resume`` was not given."""


class RunFolderBusy(UserError, RuntimeError):
    """Another process holds the run folder's lock."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be read (truncated, random bytes, not a segfuse checkpoint)."""
