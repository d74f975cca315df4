"""The disk a run will need, checked before any work: a full disk met at the merge
would come after every GPU hour was spent.

The estimate is the uncompressed output (rows x width x layers x poolings x dtype bytes,
per-token outputs by residues embedded, plus ids and per-row data) and as much again
for the checkpoints, which hold the same rows and are all on disk while the merge
writes the output.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.ckpt.batch import run_store_dtype
from virnucpro.ckpt.errors import DiskFullError
from virnucpro.ckpt.layout import PER_TOKEN
from virnucpro.ckpt.safe_write import HDF5_OVERHEAD_BYTES, human_size
from virnucpro.ckpt.storage import run_compression

# An id, its length, truncation flag and the per-row QC data, generously.
ROW_BYTES = 128


def output_bytes(manifest: Mapping[str, Any], lengths: np.ndarray) -> int:
    """About the size of the merged output of a run over sequences of ``lengths``,
    its per-token parts included."""
    return sum(_output_shares(manifest, lengths))


def check_run_space(run_dir: Path, manifest: Mapping[str, Any], lengths: np.ndarray) -> int:
    """Raise DiskFullError, in one line, when ``run_dir``'s filesystem has less free
    space than the run's output plus its checkpoints; return the bytes needed.

    Per-token values are on the disk once: the checkpoints become the output's parts
    (linked; copied only when the run compresses its output)."""
    copied, per_token = _output_shares(manifest, lengths)
    needed = 2 * copied + per_token + copied_parts_bytes(manifest, lengths)
    where = Path(run_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed:
        raise DiskFullError(
            f"not enough disk space for this run in {run_dir}: it needs about "
            f"{human_size(needed)} (its output about {human_size(copied + per_token)} and "
            f"its checkpoints), the filesystem has {human_size(free)} free; free space, "
            "choose another --output, or store less (--store-dtype float16, fewer layers "
            "or poolings)",
            run_dir,
            needed,
        )
    return needed


def copied_parts_bytes(manifest: Mapping[str, Any], lengths: np.ndarray) -> int:
    """About how many bytes the per-token parts take of their own: none when linked
    (they are the checkpoints), the values uncompressed (an upper bound) when the run
    compresses its output and they are copies."""
    if run_compression(manifest) == "none":
        return 0
    return _output_shares(manifest, lengths)[1]


def _output_shares(manifest: Mapping[str, Any], lengths: np.ndarray) -> tuple[int, int]:
    """Bytes of the merged file (written by the merge) and of the per-token values
    (the checkpoints' own, which become the output's parts)."""
    width = int(manifest["embed_dim"])
    itemsize = run_store_dtype(manifest).itemsize
    layers = len(manifest["layers"])
    poolings = list(manifest["pooling"])
    rows = int(lengths.shape[0])
    cut = int(manifest.get("max_length") or 0)
    truncating = manifest.get("long", "truncate") == "truncate" and cut > 0
    residues = int(np.minimum(lengths, cut).sum() if truncating else lengths.sum())
    pooled = sum(1 for p in poolings if p != PER_TOKEN)
    merged = rows * width * itemsize * layers * pooled + rows * ROW_BYTES + HDF5_OVERHEAD_BYTES
    if PER_TOKEN not in poolings:
        return merged, 0
    return merged + layers * 16 * rows, layers * residues * width * itemsize
