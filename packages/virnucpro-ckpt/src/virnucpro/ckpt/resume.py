"""Resume: what is done; damaged files moved aside (never deleted), stale temporaries removed."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.ckpt.checkpoint_file import CheckpointInfo
from virnucpro.ckpt.fsio import fsync_dir
from virnucpro.ckpt.layout import QUARANTINE_DIR
from virnucpro.ckpt.manifest import check_manifest, check_manifest_integrity
from virnucpro.ckpt.scan import read_indices, scan_checkpoints
from virnucpro.ckpt.stale import remove_stale_temporaries


@dataclass(frozen=True)
class QuarantinedFile:
    """A rejected file: where it was, where it went (None: left in place), and why."""

    source: Path
    destination: Path | None
    reason: str

    @property
    def message(self) -> str:
        """One line to show the user; a rejected file is never set aside silently."""
        if self.destination is None:
            return f"not used: {self.source}: {self.reason} (left in place)"
        return f"quarantined {self.source}: {self.reason}; moved to {self.destination}"


def quarantine_messages(files: Iterable[QuarantinedFile]) -> list[str]:
    """One line per rejected file, in the order given."""
    return [q.message for q in files]


@dataclass
class ResumeResult:
    """``done_indices``: sorted, unique int64 input indices held by valid checkpoints;
    ``removed_temporaries``: stale temporary files deleted (see remove_stale_temporaries)."""

    done_indices: np.ndarray
    num_sequences: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    removed_temporaries: list[Path] = field(default_factory=list)

    @property
    def num_done(self) -> int:
        return int(self.done_indices.shape[0])

    @property
    def num_left(self) -> int:
        return self.num_sequences - self.num_done


def resume_from_checkpoints(
    run_dir: Path,
    manifest: Mapping[str, Any] | None = None,
    quarantine: bool = True,
    verify_checksum: bool = True,
    ignore_sessions: Collection[str] = (),
    with_parts: bool = False,
) -> ResumeResult:
    """Validate every rank's checkpoints and return the input indices already done.

    ``manifest``: the configuration asked for now; a change of inputs, model, layers,
    pooling, precision or max length raises ManifestMismatchError. An edited
    manifest.json raises ManifestTamperedError before any file is moved. With ``quarantine``
    (only while holding the RunLock, before any writer starts) rejected files move to
    ``RUN_DIR/quarantine/`` and stale temporary files are deleted; otherwise they are
    only reported (``destination`` None). ``ignore_sessions``: sessions still writing, e.g.
    the current one when each rank computes its own work list. ``with_parts`` (only
    without ``quarantine``: a part belongs to the output and is never moved) counts the
    output parts whose checkpoints are gone, which resume restores, as done.
    """
    if with_parts and quarantine:
        raise ValueError("with_parts counts the output's parts, which quarantine must not move")
    run_dir = Path(run_dir)
    stored = check_manifest_integrity(run_dir)
    if manifest is not None:
        stored = check_manifest(run_dir, manifest)
    removed = remove_stale_temporaries(run_dir, ignore_sessions) if quarantine else []
    scan = scan_checkpoints(run_dir, stored, verify_checksum, ignore_sessions, with_parts)
    moved = [
        QuarantinedFile(path, move_aside(run_dir, path) if quarantine else None, reason)
        for path, reason in scan.rejected
    ]
    parts = [read_indices(info.path) for info in scan.valid]
    done = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return ResumeResult(done, int(stored["num_sequences"]), scan.valid, moved, removed)


def move_aside(run_dir: Path, path: Path) -> Path:
    """Move ``path`` into ``RUN_DIR/quarantine/`` under a name that never overwrites."""
    target_dir = run_dir / QUARANTINE_DIR
    target_dir.mkdir(exist_ok=True)
    prefix = path.parent.name + "__" if path.parent != run_dir else ""
    target = target_dir / f"{prefix}{path.name}"
    copy = 1
    while target.exists():
        target = target_dir / f"{prefix}{path.name}.{copy}"
        copy += 1
    os.rename(path, target)
    fsync_dir(target_dir)
    fsync_dir(path.parent)
    return target
