"""The disk-space check before a run: the estimate adds up, and too little free space is
refused in one line saying how much is needed and how much there is."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from virnucpro.ckpt import DiskFullError, check_run_space, space
from virnucpro.ckpt.safe_write import HDF5_OVERHEAD_BYTES

Usage = namedtuple("Usage", "total used free")


def _manifest(**changes):
    return {
        "embed_dim": 320,
        "layers": [5, 6],
        "pooling": ["mean", "per_token"],
        "store_dtype": "float16",
        "max_length": 100,
        "long": "truncate",
        **changes,
    }


def test_the_estimate_counts_rows_widths_layers_poolings_dtype_and_residues():
    lengths = np.array([50, 150, 300])
    residues = 50 + 100 + 100  # truncated to 100
    rows = 3 * space.ROW_BYTES + HDF5_OVERHEAD_BYTES
    pooled = 3 * 320 * 2 * 2
    per_token = 2 * (residues * 320 * 2 + 16 * 3)
    assert space.output_bytes(_manifest(), lengths) == rows + pooled + per_token
    whole = 2 * (500 * 320 * 2 + 16 * 3)
    assert space.output_bytes(_manifest(long="window"), lengths) == rows + pooled + whole
    float32 = space.output_bytes(_manifest(store_dtype=None, pooling=["mean", "max"]), lengths)
    assert float32 == rows + 3 * 320 * 4 * 2 * 2


def test_per_token_values_count_once_unless_compressed_copies_are_made():
    lengths = np.full(1000, 400)
    output = space.output_bytes(_manifest(), lengths)
    per_token = 2 * 1000 * 100 * 320 * 2  # two layers, truncated to 100 residues
    assert check_run_space(Path("/"), _manifest(), lengths) == 2 * output - per_token
    assert check_run_space(Path("/"), _manifest(compression="lzf"), lengths) == 2 * output
    plain = _manifest(pooling=["mean"])
    assert check_run_space(Path("/"), plain, lengths) == 2 * space.output_bytes(plain, lengths)


def test_too_little_free_space_is_refused_saying_what_is_needed(tmp_path, monkeypatch):
    lengths = np.full(1000, 400)
    needed = 2 * space.output_bytes(_manifest(pooling=["mean"]), lengths)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, needed - 1))
    with pytest.raises(DiskFullError) as caught:
        check_run_space(tmp_path / "not" / "yet", _manifest(pooling=["mean"]), lengths)
    message = str(caught.value)
    assert "\n" not in message
    assert f"it needs about {space.human_size(needed)}" in message
    assert f"the filesystem has {space.human_size(needed - 1)} free" in message
    assert caught.value.needed_bytes == needed
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, needed))
    assert check_run_space(tmp_path / "not" / "yet", _manifest(pooling=["mean"]), lengths) == needed
