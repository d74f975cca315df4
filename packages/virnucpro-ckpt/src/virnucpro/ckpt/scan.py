"""Find and validate every rank's checkpoint files (any number of ranks)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from virnucpro.ckpt.checkpoint_file import CheckpointInfo, validate_checkpoint_hdf5
from virnucpro.ckpt.errors import InvalidCheckpointError
from virnucpro.ckpt.layout import CHECKPOINT_NAME, TEMP_SUFFIX, iter_rank_dirs
from virnucpro.ckpt.parts import restorable_checkpoints


@dataclass
class ScanResult:
    """Valid checkpoints (no two sharing a row) and the files rejected, with reasons."""

    valid: list[CheckpointInfo] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)


def scan_checkpoints(
    run_dir: Path,
    manifest: Mapping[str, Any],
    verify_checksum: bool = True,
    ignore_sessions: Collection[str] = (),
    with_parts: bool = False,
) -> ScanResult:
    """Validate every checkpoint; a file sharing a row with an earlier one is rejected.

    Files are taken oldest first (session, then sequence, then rank), so the rows a
    later file repeats stay with the earlier file and the later file's other rows
    count as not done: every row is kept exactly once, never twice (lesson 5).
    ``with_parts``: an output part whose checkpoint is gone counts as that checkpoint
    (resume restores it), under the part's own path.
    """
    result = ScanResult()
    candidates = []
    for _rank, directory in iter_rank_dirs(run_dir):
        for path in sorted(directory.iterdir()):
            match = CHECKPOINT_NAME.match(path.name)
            if match and match["session"] in ignore_sessions:
                continue
            if path.name.endswith(TEMP_SUFFIX):
                session = CHECKPOINT_NAME.match(path.name[: -len(TEMP_SUFFIX)])
                if session and session["session"] in ignore_sessions:
                    continue
                result.rejected.append((path, "partial write (temporary file)"))
            elif not match:
                result.rejected.append((path, "not a checkpoint name"))
            else:
                candidates.append(path)
    standing: list[tuple[Path, Path | None]] = [(path, None) for path in candidates]
    if with_parts:
        standing += restorable_checkpoints(run_dir)
    infos = []
    for path, checkpoint in standing:
        try:
            infos.append(validate_checkpoint_hdf5(path, manifest, verify_checksum, checkpoint))
        except InvalidCheckpointError as exc:
            result.rejected.append((path, reason_of(path, exc)))
    owner = np.full(int(manifest["num_sequences"]), -1, dtype=np.int32)
    for info in sorted(infos, key=lambda i: (i.session, i.sequence, i.rank)):
        indices = read_indices(info.path)
        held = owner[indices]
        if (held >= 0).any():
            first = int(np.flatnonzero(held >= 0)[0])
            earlier = result.valid[held[first]].path
            result.rejected.append(
                (info.path, f"repeats row {int(indices[first])} already in {earlier}")
            )
            continue
        owner[indices] = len(result.valid)
        result.valid.append(info)
    return result


def reason_of(path: Path, exc: InvalidCheckpointError) -> str:
    """The error's text without the leading path: the reason alone, one line."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def read_indices(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["indices"][()]
