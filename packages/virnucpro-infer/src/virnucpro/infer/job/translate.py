"""Errors of data, ckpt, the loaders and the queue, as the engine's one-line types.

Matched by type (and errno for a full disk), never by message text. Anything not named
here is unexpected and propagates unchanged.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from virnucpro.ckpt import (
    CheckpointError,
    ManifestMismatchError,
    MergeError,
    RunLockedError,
)
from virnucpro.ckpt import DiskFullError as CheckpointDiskFullError
from virnucpro.data import InputError
from virnucpro.infer.job.errors import (
    BadInputError,
    DeviceMemoryError,
    DiskFullError,
    JobError,
    MissingInputError,
    OutputError,
    RunDirInUseError,
    RunDirMismatchError,
    RunDirNotWritableError,
    WeightsUnavailableError,
    WorkerFailedError,
)
from virnucpro.infer.models import ModelLoadError
from virnucpro.infer.queue_manager import QueueRunError
from virnucpro.infer.runner import SequenceOutOfMemoryError

NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _no_space(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def as_job_error(exc: BaseException) -> JobError | None:
    """The engine's error for ``exc``; None if it is not one the engine knows."""
    message = " ".join(str(exc).split())
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, CheckpointDiskFullError):
        return DiskFullError(message)
    if _no_space(exc):
        return DiskFullError(f"disk full: {message}; free some space, then resume the run")
    if isinstance(exc, InputError):
        return BadInputError(message)
    if isinstance(exc, ModelLoadError):
        return WeightsUnavailableError(message)
    if isinstance(exc, RunLockedError):
        return RunDirInUseError(message)
    if isinstance(exc, ManifestMismatchError):
        return RunDirMismatchError(message)
    if isinstance(exc, MergeError):
        return OutputError(message)
    if isinstance(exc, SequenceOutOfMemoryError):
        return DeviceMemoryError(message)
    if isinstance(exc, QueueRunError):
        return WorkerFailedError(f"{message}; finished work is checkpointed, resume the run")
    if isinstance(exc, CheckpointError):
        return OutputError(message)
    if isinstance(exc, OSError) and exc.errno in NOT_WRITABLE:
        return RunDirNotWritableError(
            f"cannot write {exc.filename or 'the run directory'}: {exc.strerror}; "
            "choose a writable output directory (-o)"
        )
    if isinstance(exc, FileNotFoundError):
        return MissingInputError(f"file not found: {exc.filename or message}")
    return None


@contextmanager
def job_errors() -> Iterator[None]:
    """Re-raise known failures as the engine's types (the original as the cause)."""
    try:
        yield
    except Exception as exc:
        known = as_job_error(exc)
        if known is None or known is exc:
            raise
        raise known from exc
