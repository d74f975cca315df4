"""What a run directory holds, and ``--force``: an old run moved beside the directory,
never deleted and never kept inside the new run."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virnucpro.ckpt.layout import (
    CHECKPOINTS_DIR,
    MANIFEST_NAME,
    MERGED_NAME,
    PARTS_DIR,
    QUARANTINE_DIR,
)
from virnucpro.infer.job.errors import RunStopped

SPOOL_DIR = "spool"
"""Where a run keeps gzip inputs' residues uncompressed, for reading at an offset."""
RUN_FILES = (MANIFEST_NAME, CHECKPOINTS_DIR, QUARANTINE_DIR, MERGED_NAME, PARTS_DIR, SPOOL_DIR)
"""What makes a directory a used run directory (``run.lock`` alone does not)."""


def used_entries(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]


def move_old_run_aside(run_dir: Path) -> Path | None:
    """Move the old run's files into ``<run_dir>.replaced-<timestamp>/`` beside it."""
    entries = used_entries(run_dir)
    if not entries:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.parent / f"{run_dir.name}.replaced-{stamp}"
    suffix = 1
    while target.exists():
        target = run_dir.parent / f"{run_dir.name}.replaced-{stamp}-{suffix}"
        suffix += 1
    target.mkdir()
    for entry in entries:
        os.rename(entry, target / entry.name)
    return target


@contextmanager
def removed_if_nothing_computed(run_dir: Path) -> Iterator[None]:
    """A run directory this call creates is removed again if the run fails before any
    checkpoint exists (weights not available, bad input): nothing is left behind."""
    created = not run_dir.exists()
    try:
        yield
    except BaseException as exc:
        computed = any((run_dir / "checkpoints").glob("rank_*/*.h5"))
        if created and not computed and not isinstance(exc, RunStopped):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
