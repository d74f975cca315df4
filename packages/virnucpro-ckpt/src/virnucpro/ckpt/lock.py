"""The run lock: an fcntl lock on RUN_DIR/run.lock, held while a process runs.

The file is never unlinked (lesson 6): unlinking lets two processes lock two different
files of the same name. A held lock tells ``inspect`` that the run is running.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from virnucpro.ckpt.errors import RunLockedError
from virnucpro.ckpt.layout import LOCK_NAME


class RunLock:
    """Exclusive lock of a run directory; use as a context manager."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = False) -> RunLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another virnucpro process; "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_run_locked(run_dir: Path) -> bool:
    """True when some process holds the run's lock (probed without waiting)."""
    return is_locked(Path(run_dir) / LOCK_NAME)


def is_locked(path: Path) -> bool:
    """True when some live process holds an flock on ``path`` (probed without waiting; a
    dead process's lock is gone with it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone, or not ours to read: nobody here holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
