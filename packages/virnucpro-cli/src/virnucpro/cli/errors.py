"""Errors a person can act on: one line, a distinct exit code, no traceback.

Code that knows what went wrong raises a :class:`CliError` subclass; :func:`translate`
turns the few standard exceptions that need no wrapping (a full disk, a missing file)
into one, and anything else becomes an internal error whose traceback ``--debug``
shows. The exit codes are listed in the package README.
"""

from __future__ import annotations

import errno
import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    MISSING_INPUT = 3
    BAD_INPUT = 4
    WEIGHTS_UNAVAILABLE = 5
    NO_GPU = 6
    RUN_DIR_IN_USE = 7
    RUN_DIR_MISMATCH = 8
    INPUTS_CHANGED = 9
    DISK_FULL = 10
    PLUGIN = 11
    INTERRUPTED = 130
    TERMINATED = 143


class CliError(Exception):
    """An error with a one-line message for a person and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())


class UsageError(CliError):
    """A value the command line accepted but the run cannot use (e.g. a layer the model
    lacks), or a combination not supported yet."""

    exit_code = ExitCode.USAGE


class MissingInputError(CliError):
    exit_code = ExitCode.MISSING_INPUT


class BadInputError(CliError):
    """Not FASTA, duplicate ids, empty records, ..."""

    exit_code = ExitCode.BAD_INPUT


class WeightsUnavailableError(CliError):
    exit_code = ExitCode.WEIGHTS_UNAVAILABLE


class NoGpuError(CliError):
    exit_code = ExitCode.NO_GPU


class RunDirInUseError(CliError):
    exit_code = ExitCode.RUN_DIR_IN_USE


class RunDirMismatchError(CliError):
    """The run directory holds a run of another configuration."""

    exit_code = ExitCode.RUN_DIR_MISMATCH


class InputsChangedError(CliError):
    """``resume`` found inputs that differ from the ones the run started with."""

    exit_code = ExitCode.INPUTS_CHANGED


class DiskFullError(CliError):
    exit_code = ExitCode.DISK_FULL


class PluginError(CliError):
    exit_code = ExitCode.PLUGIN


class StoppedBySignal(CliError):
    """The run stopped cleanly at a batch boundary after SIGINT or SIGTERM."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED


def translate(exc: BaseException) -> CliError | None:
    """The :class:`CliError` a person should see for ``exc``; None if it is unexpected."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return DiskFullError(f"disk full{where}: free some space, then run `virnucpro resume`")
    if isinstance(exc, FileNotFoundError):
        return MissingInputError(f"file not found: {exc.filename or exc}")
    if isinstance(exc, KeyboardInterrupt):
        return StoppedBySignal(signal.SIGINT, "interrupted")
    return None


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody anticipated."""
    detail = " ".join(str(exc).split())
    name = type(exc).__name__
    text = f"{name}: {detail}" if detail else name
    return f"internal error: {text} (run `virnucpro --debug ...` to see the traceback)"
