"""How an embedding dataset is laid out on disk: contiguous, or chunked and compressed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from virnucpro.ckpt.errors import MergeError

# At most HDF5's default chunk cache (1 MiB per dataset), so a reader keeps the chunk it
# decompressed for the next protein, and reading one protein touches a few chunks.
CHUNK_BYTES = 2**20
COMPRESSIONS = ("none", "lzf", "gzip")


def run_compression(manifest: Mapping[str, Any]) -> str:
    """The compression a run's output asks for (absent in older manifests: none)."""
    return str(manifest.get("compression") or "none")


def storage(
    shape: tuple[int, int], dtype: np.dtype, compression: str, per_token: bool
) -> dict[str, Any]:
    """How an embedding dataset is laid out (``create_dataset`` keywords).

    Per-token datasets are chunked in blocks of whole rows of at most CHUNK_BYTES, so
    one protein's rows read without touching the rest of the file. Pooled datasets stay
    contiguous unless compressed (HDF5 compresses only chunked data): reading all N
    rows at once, the common use, is then one sequential read with no chunk index.
    """
    if compression not in COMPRESSIONS:
        raise MergeError(f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)})")
    total, width = shape
    if (compression == "none" and not per_token) or total == 0:
        return {}
    rows = min(total, max(1, CHUNK_BYTES // max(1, width * dtype.itemsize)))
    # No chunk cache while writing: every write reaches the disk at once, so a full
    # disk fails that write (a cached chunk flushed when h5py frees the dataset would
    # meet ENOSPC where HDF5 ignores it and crashes, as the sieve buffer would).
    uncached = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    uncached.set_chunk_cache(0, 0, 1.0)
    layout: dict[str, Any] = {"chunks": (rows, width), "dapl": uncached}
    if compression != "none":
        layout["compression"] = compression
    return layout
