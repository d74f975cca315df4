"""Package exceptions -> the cli's one-line errors with their exit codes.

data, ckpt and infer raise their own types with one-line messages; here each becomes
the :class:`CliError` whose exit code the README lists. Anything not named here stays
an internal error (``--debug`` shows its traceback).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from virnucpro.ckpt import CheckpointWriteError, ManifestMismatchError, MergeError, RunLockedError
from virnucpro.cli.errors import (
    BadInputError,
    CliError,
    DiskFullError,
    InputsChangedError,
    RunDirInUseError,
    RunDirMismatchError,
    WeightsUnavailableError,
)
from virnucpro.data import InputError
from virnucpro.infer import ModelLoadError, SequenceOutOfMemoryError

NO_SPACE = (f"[Errno {errno.ENOSPC}]", "No space left on device")


def translate_pipeline_error(exc: BaseException) -> CliError | None:
    """The :class:`CliError` for a package exception; None if it is not one we know."""
    message = str(exc)
    if isinstance(exc, InputError):
        return BadInputError(message)
    if isinstance(exc, ModelLoadError):
        return WeightsUnavailableError(message)
    if isinstance(exc, RunLockedError):
        return RunDirInUseError(message)
    if isinstance(exc, ManifestMismatchError):
        if "cannot resume" in message and "different inputs" in message:
            return InputsChangedError(message)
        return RunDirMismatchError(message)
    if isinstance(exc, CheckpointWriteError):
        if any(marker in message for marker in NO_SPACE):
            return DiskFullError(f"disk full: {message}; free some space, then run resume")
        return CliError(message)
    if isinstance(exc, (MergeError, SequenceOutOfMemoryError)):
        return CliError(message)
    return None


@contextmanager
def pipeline_errors() -> Iterator[None]:
    """Re-raise package exceptions as the matching :class:`CliError`."""
    try:
        yield
    except Exception as exc:
        known = translate_pipeline_error(exc)
        if known is None:
            raise
        raise known from exc
