"""Run-folder lock: at most one ``segfuse train`` writes a run folder at a time.

``acquire_run_lock(run_dir)`` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` and writes the
holder's PID into it. The lock belongs to the open file: it is held until :meth:`RunLock.release` or
until the process ends in any way (``kill -9`` included: the OS drops it), so a stale lock file never
blocks a later run. A second process gets :class:`RunFolderBusy` naming the PID that holds the lock.
On systems without ``fcntl`` (Windows) no lock is taken.
"""
from __future__ import annotations

import os

from segfuse.data.errors import RunFolderBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """An acquired lock; ``release()`` (or process exit) frees it. Usable as a context manager."""

    def __init__(self, path: str, fd):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)          # closing the file drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire_run_lock(run_dir: str) -> RunLock:
    """Lock ``run_dir`` (created if missing) for this process; :class:`RunFolderBusy` if it is held."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
    if fcntl is None:  # pragma: no cover
        return RunLock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunFolderBusy(f"run folder {run_dir} is in use by another segfuse train (PID {holder}); "
                            "wait for it to finish or choose another --run-dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)
