"""What a run directory holds, and ``--force``: moving an old run aside, never deleting it."""

from __future__ import annotations

import os
import time
from pathlib import Path

RUN_FILES = ("manifest.json", "checkpoints", "quarantine", "embeddings.h5")
"""What makes a directory a used run directory (``run.lock`` alone does not)."""


def used_entries(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]


def move_old_run_aside(run_dir: Path) -> Path | None:
    """Move the old run's files into ``RUN_DIR/replaced-<timestamp>/``; None if none."""
    entries = used_entries(run_dir)
    if not entries:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir / f"replaced-{stamp}"
    suffix = 1
    while target.exists():
        target = run_dir / f"replaced-{stamp}-{suffix}"
        suffix += 1
    target.mkdir()
    for entry in entries:
        os.rename(entry, target / entry.name)
    return target
