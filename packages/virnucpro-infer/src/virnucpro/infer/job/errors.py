"""The engine's errors: one line each, saying what is wrong and what to do.

Front ends map these types (never their text) to what they show; the cli gives each
its documented exit code. Errors of data, ckpt and the model loaders are re-raised as
one of these at the engine's boundary (the original is the ``__cause__``), so a caller
catches one family whatever part of the pipeline failed. Torch-free on purpose: the
cli imports it without paying for torch.
"""

from __future__ import annotations


class JobError(Exception):
    """A failure a person can act on; ``message`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())


class ConfigError(JobError, ValueError):
    """A value the run cannot use (a layer the model lacks, an unknown output format)."""


class MissingInputError(JobError):
    """An input file or the run directory is not there."""


class BadInputError(JobError, ValueError):
    """An input is not usable FASTA: not FASTA, duplicate ids, empty records, ..."""


class WeightsUnavailableError(JobError):
    """The model's weights cannot be found, read or fetched."""


class NoDeviceError(JobError):
    """The requested GPUs are not there."""


class RunDirInUseError(JobError):
    """Another process holds the run directory's lock."""


class RunDirNotWritableError(JobError):
    """The run directory cannot be created or written (read-only, no permission)."""


class RunDirMismatchError(JobError):
    """The run directory holds another run, or its weights or manifest changed."""


class InputsChangedError(JobError):
    """``resume`` found inputs that differ from the ones the run started with."""


class DiskFullError(JobError):
    """A write failed for want of space; what was checkpointed before stays valid."""


class WorkerFailedError(JobError):
    """A worker process or rank failed for good; finished work is checkpointed."""


class ModelTooLargeError(JobError):
    """The model cannot fit on the chosen device."""


class DeviceMemoryError(JobError):
    """One sequence does not fit in device memory even in a batch of its own."""


class OutputError(JobError):
    """The merged output could not be written or is damaged and cannot be rebuilt."""


class RunStopped(JobError):
    """The stop flag was raised; every finished batch is checkpointed."""

    def __init__(self, run_dir: object) -> None:
        super().__init__(
            f"finished work is checkpointed; continue with: virnucpro resume {run_dir}"
        )
        self.run_dir = run_dir


class PluginError(JobError):
    """A plugin failed to load or implements a hook that does not exist."""
