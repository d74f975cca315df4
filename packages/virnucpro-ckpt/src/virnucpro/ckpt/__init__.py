"""Kill-safe HDF5 checkpoints, resume and merge for virnucpro runs.

Nothing here unpickles: checkpoints are HDF5 with JSON-text attributes.
"""

from virnucpro.ckpt.assembly import OutputAssembly
from virnucpro.ckpt.batch import CheckpointBatch
from virnucpro.ckpt.checkpoint_file import (
    CheckpointInfo,
    validate_checkpoint_hdf5,
    write_checkpoint_file,
)
from virnucpro.ckpt.errors import (
    CheckpointError,
    CheckpointWriteError,
    DiskFullError,
    EmbeddingsFileError,
    EmbeddingsKeyError,
    InvalidCheckpointError,
    ManifestMismatchError,
    ManifestTamperedError,
    MergeError,
    RunLockedError,
)
from virnucpro.ckpt.inspection import inspect_run
from virnucpro.ckpt.layout import new_session_id
from virnucpro.ckpt.lock import RunLock, is_run_locked
from virnucpro.ckpt.manifest import (
    check_manifest,
    check_manifest_integrity,
    manifest_differences,
    read_manifest,
    write_manifest,
)
from virnucpro.ckpt.merge import merge_checkpoints
from virnucpro.ckpt.parts import restore_checkpoints
from virnucpro.ckpt.reader import Embeddings, open_embeddings
from virnucpro.ckpt.resume import (
    QuarantinedFile,
    ResumeResult,
    quarantine_messages,
    resume_from_checkpoints,
)
from virnucpro.ckpt.space import check_run_space
from virnucpro.ckpt.stale import remove_stale_temporaries
from virnucpro.ckpt.trigger import CheckpointTrigger
from virnucpro.ckpt.verify import verify_output
from virnucpro.ckpt.writer import AsyncCheckpointWriter, WriterStats

__all__ = [
    "AsyncCheckpointWriter",
    "CheckpointBatch",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointTrigger",
    "CheckpointWriteError",
    "DiskFullError",
    "Embeddings",
    "EmbeddingsFileError",
    "EmbeddingsKeyError",
    "InvalidCheckpointError",
    "ManifestMismatchError",
    "ManifestTamperedError",
    "MergeError",
    "OutputAssembly",
    "QuarantinedFile",
    "ResumeResult",
    "RunLock",
    "RunLockedError",
    "WriterStats",
    "check_manifest",
    "check_manifest_integrity",
    "check_run_space",
    "inspect_run",
    "is_run_locked",
    "manifest_differences",
    "merge_checkpoints",
    "new_session_id",
    "open_embeddings",
    "quarantine_messages",
    "read_manifest",
    "remove_stale_temporaries",
    "restore_checkpoints",
    "resume_from_checkpoints",
    "validate_checkpoint_hdf5",
    "verify_output",
    "write_checkpoint_file",
    "write_manifest",
]
