"""Errors of the checkpoint package; each message is one line saying what to do."""


class CheckpointError(Exception):
    """Base of every error raised by virnucpro.ckpt."""


class InvalidCheckpointError(CheckpointError):
    """A checkpoint file is damaged, partial or belongs to another run."""


class CheckpointWriteError(CheckpointError):
    """A background checkpoint write failed; the rows it held are not saved."""


class ManifestMismatchError(CheckpointError, ValueError):
    """Resume was asked with a configuration that differs from the run's manifest."""


class MergeError(CheckpointError):
    """The checkpoints cannot be merged: a row is missing, doubled or unreadable."""


class RunLockedError(CheckpointError):
    """Another process holds the run directory's lock."""


class ManifestTamperedError(ManifestMismatchError):
    """manifest.json was edited after the run started, or no longer matches its checkpoints."""


class DiskFullError(CheckpointError):
    """A write ran out of disk space (or quota); what was already checkpointed is kept."""

    def __init__(self, message: str, path: object = None, needed_bytes: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.needed_bytes = needed_bytes


def one_line(exc: BaseException) -> str:
    """An error's text on one line (HDF5 messages span several), at most 200 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


class EmbeddingsFileError(CheckpointError):
    """A path is missing, closed, or not a merged virnucpro embeddings file."""


class EmbeddingsKeyError(CheckpointError, KeyError):
    """An id, layer or pooling the embeddings file does not hold."""

    def __str__(self) -> str:
        # KeyError would show the message in quotes; say it plainly like every other error.
        return str(self.args[0]) if self.args else ""
