"""Temporary files that an interrupted write left behind, removed at the next start.

A temporary file is never a result: a checkpoint's rows are computed again and a merge
is redone, so keeping one only takes space (an interrupted merge leaves one as large as
the output). Quarantine keeps damaged finished files, never temporaries. An output being
assembled by a live process (locked by it) is not stale.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Collection
from pathlib import Path

from virnucpro.ckpt.fsio import fsync_dir
from virnucpro.ckpt.layout import (
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    MERGED_NAME,
    PARTS_DIR,
    QUARANTINE_DIR,
    TEMP_SUFFIX,
    iter_rank_dirs,
)
from virnucpro.ckpt.lock import is_locked

# What move_aside made of a merge's or the manifest's temporary file in older versions.
_QUARANTINED_TEMP = re.compile(
    rf"^\.({re.escape(MERGED_NAME)}|{re.escape(MANIFEST_NAME)})\..*{re.escape(TEMP_SUFFIX)}(\.\d+)?$"
)


def remove_stale_temporaries(run_dir: Path, keep_sessions: Collection[str] = ()) -> list[Path]:
    """Remove every temporary file of the run's merges (and a merge's unfinished folder
    of parts), manifest and checkpoints; return them.

    Call it while holding the RunLock and before any writer of this process starts:
    then no live process owns them. ``keep_sessions``: sessions whose checkpoint
    temporaries must stay (still writing). Old merge temporaries that earlier versions
    moved into ``quarantine/`` are removed too.
    """
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob(f".*{TEMP_SUFFIX}"))
    for _rank, directory in iter_rank_dirs(run_dir):
        for path in sorted(directory.glob(f"*{TEMP_SUFFIX}")):
            match = CHECKPOINT_NAME.match(path.name[: -len(TEMP_SUFFIX)])
            if match is None or match["session"] not in keep_sessions:
                found.append(path)
    quarantine = run_dir / QUARANTINE_DIR
    if quarantine.is_dir():
        found += sorted(p for p in quarantine.iterdir() if _QUARANTINED_TEMP.match(p.name))
    removed = []
    for path in found:
        # An output being assembled by a live run is locked by it.
        if path.is_file() and not is_locked(path):
            path.unlink()
            removed.append(path)
        elif path.is_dir() and path.name.startswith(f".{PARTS_DIR}."):
            shutil.rmtree(path)
            removed.append(path)
    for directory in {p.parent for p in removed}:
        fsync_dir(directory)
    return removed
