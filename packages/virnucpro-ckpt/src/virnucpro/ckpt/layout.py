"""Names and places inside a run directory (docs/design.md, "Run directory")."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "run.lock"
CHECKPOINTS_DIR = "checkpoints"
QUARANTINE_DIR = "quarantine"
MERGED_NAME = "embeddings.h5"
# A per-token output's values: the checkpoints themselves, linked (or copied, when the run
# compresses) beside the merged file, which maps them; they move with it.
PARTS_DIR = "embeddings_per_token"
TEMP_SUFFIX = ".tmp"
DEFAULT_POOLING = "mean"
PER_TOKEN = "per_token"

CHECKPOINT_NAME = re.compile(r"^(?P<session>[A-Za-z0-9-]+)_(?P<seq>\d{5,})\.h5$")
RANK_DIR_NAME = re.compile(r"^rank_(?P<rank>\d+)$")


def new_session_id() -> str:
    """A session id that sorts by start time and never repeats across sessions."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def rank_dir(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"rank_{rank}"


def checkpoint_path(run_dir: Path, rank: int, session: str, seq: int) -> Path:
    return rank_dir(run_dir, rank) / f"{session}_{seq:05d}.h5"


def temp_path(final: Path) -> Path:
    return final.with_name(final.name + TEMP_SUFFIX)


def pooled_name(layer: int, pooling: str) -> str:
    return f"layer_{layer}/{pooling}"


def offsets_name(layer: int) -> str:
    return f"layer_{layer}/{PER_TOKEN}_offsets"


def spans_name(layer: int) -> str:
    return f"layer_{layer}/{PER_TOKEN}_spans"


def part_name(merge: str, number: int) -> str:
    """A part's path relative to the merged file, as its virtual datasets name it. The
    merge's own id in the name means a file whose parts are missing can never read
    another run's (HDF5 looks for a missing source in the working directory too)."""
    return f"{PARTS_DIR}/{merge}_part_{number:05d}.h5"


def output_names(layers: Iterable[int], pooling: Iterable[str], merged: bool = False) -> list[str]:
    """Every output dataset a checkpoint (or, ``merged``, the merged file) of a run with
    these layers and poolings holds: a checkpoint's per-token rows come with their
    offsets (N+1, its rows in order), the merged file's with their spans (N x 2, where
    each input row lies among the parts)."""
    names = []
    for layer in layers:
        for kind in pooling:
            names.append(pooled_name(layer, kind))
            if kind == PER_TOKEN:
                names.append(spans_name(layer) if merged else offsets_name(layer))
    return sorted(names)


def default_output(layers: Iterable[int], pooling: Iterable[str]) -> str | None:
    """The output the merged file also calls ``embeddings``: last layer, mean pooling."""
    layers = list(layers)
    if not layers or DEFAULT_POOLING not in pooling:
        return None
    return pooled_name(max(layers), DEFAULT_POOLING)


def iter_rank_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(rank, directory)`` for every rank directory present, by rank."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = RANK_DIR_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match["rank"]), child))
    return sorted(found)
