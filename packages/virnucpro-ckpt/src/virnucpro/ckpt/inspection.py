"""What ``virnucpro inspect-checkpoint`` shows: per rank, each checkpoint; totals; state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

from virnucpro.ckpt.checkpoint_file import CheckpointInfo, parse_checkpoint_path
from virnucpro.ckpt.errors import InvalidCheckpointError
from virnucpro.ckpt.layout import MERGED_NAME, RANK_DIR_NAME
from virnucpro.ckpt.lock import is_run_locked
from virnucpro.ckpt.manifest import read_manifest
from virnucpro.ckpt.parts import restorable_checkpoints
from virnucpro.ckpt.scan import scan_checkpoints
from virnucpro.ckpt.verify import verify_output

STATE_RUNNING = "running"
STATE_INTERRUPTED = "interrupted"
STATE_COMPLETE = "complete"


def inspect_run(run_dir: Path, verify: bool = False) -> dict[str, Any]:
    """A JSON-able report of a run directory; moves nothing.

    ``verify`` also checks every file's data checksum, the merged output's included
    (reads all data); without it the output's structure is still checked. State is
    ``running`` while a process holds the run lock, ``complete`` once every row is
    done and merged into an intact output (its checkpoints may be gone: an intact
    output counts every row), ``interrupted`` otherwise. ``output``
    says whether ``embeddings.h5`` is present and, if damaged, what is wrong.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    total = int(manifest["num_sequences"])
    merged = (run_dir / MERGED_NAME).is_file()
    problem = verify_output(run_dir, full=verify) if merged else None
    intact = merged and problem is None
    # Without an intact output, the parts whose checkpoints are gone count as those
    # checkpoints: resume restores them.
    scan = scan_checkpoints(run_dir, manifest, verify_checksum=verify, with_parts=not intact)
    stands_for = {} if intact else dict(restorable_checkpoints(run_dir))
    rows = [_valid_entry(info) for info in scan.valid]
    rows += [_rejected_entry(path, reason, stands_for.get(path)) for path, reason in scan.rejected]
    rows.sort(key=lambda r: (r["rank"] if r["rank"] is not None else -1, r["path"]))
    # An intact output holds every row, whether or not its checkpoints were removed.
    done = total if intact else sum(i.num_sequences for i in scan.valid)
    if is_run_locked(run_dir):
        state = STATE_RUNNING
    elif done == total and intact:
        state = STATE_COMPLETE
    else:
        state = STATE_INTERRUPTED
    ranks: dict[str, dict[str, int]] = {}
    for entry in rows:
        if entry["rank"] is None:
            continue
        summary = ranks.setdefault(str(entry["rank"]), {"checkpoints": 0, "sequences": 0})
        summary["checkpoints"] += 1
        summary["sequences"] += entry["sequences"] if entry["valid"] else 0
    return {
        "run_dir": str(run_dir),
        "state": state,
        "merged": merged,
        "output": {"path": str(run_dir / MERGED_NAME), "present": merged, "problem": problem},
        "model": manifest["model"],
        "total_sequences": total,
        "completed_sequences": done,
        "remaining_sequences": total - done,
        "verified": verify,
        "ranks": ranks,
        "checkpoints": rows,
    }


def _valid_entry(info: CheckpointInfo) -> dict[str, Any]:
    attrs = info.attrs
    return {
        "path": str(info.path),
        "rank": info.rank,
        "session": info.session,
        "sequence": info.sequence,
        "sequences": info.num_sequences,
        "created_at": attrs["created_at"],
        "written_at": attrs["written_at"],
        "trigger_reason": attrs["trigger_reason"],
        "gpu_memory_allocated_bytes": attrs["gpu_memory_allocated_bytes"],
        "gpu_memory_peak_bytes": attrs["gpu_memory_peak_bytes"],
        "valid": True,
        "problem": None,
    }


def _rejected_entry(path: Path, reason: str, checkpoint: Path | None) -> dict[str, Any]:
    """``checkpoint``: the one a rejected part stands for, whose name says its rank."""
    rank: int | None
    session: str | None
    sequence: int | None
    try:
        rank, session, sequence = parse_checkpoint_path(checkpoint or path)
    except InvalidCheckpointError:
        rank, session, sequence = _rank_of(path), None, None
    return {
        "path": str(path),
        "rank": rank,
        "session": session,
        "sequence": sequence,
        "sequences": _row_count(path),
        "created_at": None,
        "written_at": None,
        "trigger_reason": None,
        "gpu_memory_allocated_bytes": None,
        "gpu_memory_peak_bytes": None,
        "valid": False,
        "problem": reason,
    }


def _rank_of(path: Path) -> int | None:
    match = RANK_DIR_NAME.match(path.parent.name)
    return int(match["rank"]) if match else None


def _row_count(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["indices"].shape[0])
    except (OSError, KeyError):
        return 0
