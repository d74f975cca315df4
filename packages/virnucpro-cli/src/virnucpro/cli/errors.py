"""Every error a person sees: one line, a documented exit code, no traceback.

The engine raises :class:`virnucpro.infer.job.errors.JobError` types; each maps to an
exit code here by its type (never by its text). Anything else is an internal error
whose traceback ``--debug`` shows. The README lists the codes.
"""

from __future__ import annotations

import errno
import signal
from enum import IntEnum

from virnucpro.infer.job import errors as job


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
    MODEL_TOO_LARGE = 12
    WORKER_FAILED = 13
    OUTPUT_FAILED = 14
    OUT_OF_DEVICE_MEMORY = 15
    NOT_WRITABLE = 16
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_CODES: dict[type[job.JobError], ExitCode] = {
    job.ConfigError: ExitCode.USAGE,
    job.MissingInputError: ExitCode.MISSING_INPUT,
    job.BadInputError: ExitCode.BAD_INPUT,
    job.WeightsUnavailableError: ExitCode.WEIGHTS_UNAVAILABLE,
    job.NoDeviceError: ExitCode.NO_GPU,
    job.RunDirInUseError: ExitCode.RUN_DIR_IN_USE,
    job.RunDirMismatchError: ExitCode.RUN_DIR_MISMATCH,
    job.InputsChangedError: ExitCode.INPUTS_CHANGED,
    job.DiskFullError: ExitCode.DISK_FULL,
    job.PluginError: ExitCode.PLUGIN,
    job.ModelTooLargeError: ExitCode.MODEL_TOO_LARGE,
    job.WorkerFailedError: ExitCode.WORKER_FAILED,
    job.OutputError: ExitCode.OUTPUT_FAILED,
    job.DeviceMemoryError: ExitCode.OUT_OF_DEVICE_MEMORY,
    job.RunDirNotWritableError: ExitCode.NOT_WRITABLE,
}


class StoppedBySignal(job.JobError):
    """The run stopped cleanly at a batch boundary after SIGINT or SIGTERM."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED


def exit_code_of(error: job.JobError) -> ExitCode:
    if isinstance(error, StoppedBySignal):
        return error.exit_code
    kind = getattr(error, "kind", None)
    if kind is not None:
        # A torchrun rank repeats rank 0's failure under rank 0's exit code.
        for error_type, code in EXIT_CODES.items():
            if error_type.__name__ == kind:
                return code
    for error_type in type(error).__mro__:
        if error_type in EXIT_CODES:
            return EXIT_CODES[error_type]
    return ExitCode.INTERNAL


def as_known(exc: BaseException) -> job.JobError | None:
    """The one-line error a person should see for ``exc``; None if it is unexpected."""
    if isinstance(exc, job.JobError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return job.DiskFullError(f"disk full{where}: free some space, then run `virnucpro resume`")
    if isinstance(exc, KeyboardInterrupt):
        return StoppedBySignal(signal.SIGINT, "interrupted")
    return None


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody anticipated."""
    detail = " ".join(str(exc).split())
    name = type(exc).__name__
    text = f"{name}: {detail}" if detail else name
    return f"internal error: {text} (run `virnucpro --debug ...` to see the traceback)"
