"""What embeddings.h5 stores, end to end: the dtype and compression asked for, per-row
QC and reads-mode provenance that regroup a read's frames, and the disk-space refusal
before any work."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.ckpt import open_embeddings, verify_output
from virnucpro.data import build_index

ROOT = Path(__file__).resolve().parents[2]
READS = ROOT / "examples" / "reads.fasta"
FRAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


def test_reads_mode_rows_say_their_read_chunk_and_frame(virnucpro, tmp_path, fast_args):
    run_dir = tmp_path / "run"
    storage = ["--store-dtype", "float16", "--compression", "lzf", "--pooling", "per-token"]
    done = virnucpro(["run", READS, "-o", run_dir, "--input-type", "dna", *fast_args, *storage])
    assert done.returncode == 0, done.stderr
    assert verify_output(run_dir) is None
    index = build_index([READS], "dna", 300)
    with open_embeddings(run_dir) as result:
        read_id = result.row_data("read_id")
        chunk = result.row_data("chunk")
        frame = result.row_data("frame")
        assert (chunk.dtype, frame.dtype) == (np.int32, np.int8)
        assert set(frame.tolist()) <= set(range(6))
        assert list(result.ids) == [
            f"{r}_chunk_{c}{FRAMES[f]}" for r, c, f in zip(read_id, chunk, frame, strict=True)
        ]
        reads = [line[1:].split()[0] for line in READS.read_text().splitlines() if line[0] == ">"]
        assert list(dict.fromkeys(read_id)) == [r for r in reads if r in set(read_id)]
        for read in set(read_id):
            rows = np.flatnonzero(read_id == read)
            assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
            keys = list(zip(chunk[rows], frame[rows], strict=True))
            assert keys == sorted(set(keys))
        assert np.array_equal(result.row_data("input_length"), index.lengths)
        assert np.array_equal(result.row_data("nonstandard"), index.nonstandard)
        assert result.store_dtype == np.float16
        assert result.get(result.ids[0], pooling="per_token").dtype == np.float16
    parts = sorted((run_dir / "embeddings_per_token").iterdir())
    assert parts and not (run_dir / "checkpoints").exists()
    for part in parts:
        with h5py.File(part, "r") as f:
            assert f["layer_6/per_token"].compression == "lzf"


def test_protein_rows_keep_the_input_length_before_truncation(virnucpro, proteins, tmp_path):
    from virnucpro.infer import embed

    output = embed(
        proteins,
        tmp_path / "run",
        model="esm2_t6_8M_UR50D",
        random_weights=True,
        max_length=40,
        device="cpu",
        workers=0,
    )
    with open_embeddings(output) as result:
        assert result.row_datasets == ("lengths", "truncated", "input_length", "nonstandard")
        full = result.row_data("input_length")
        assert np.array_equal(result.lengths, np.minimum(full, 40))
        assert np.array_equal(result.truncated, full > 40)
        assert not result.row_data("nonstandard").any()


def test_a_run_that_cannot_fit_is_refused_before_any_work(proteins, tmp_path, monkeypatch):
    from virnucpro.infer import embed
    from virnucpro.infer.job.errors import DiskFullError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(DiskFullError, match=r"needs about .* the filesystem has 5.0 KB free"):
        embed(
            proteins,
            tmp_path / "run",
            model="esm2_t6_8M_UR50D",
            random_weights=True,
            pooling=["per-token"],
            device="cpu",
            workers=0,
        )
    assert not (tmp_path / "run" / "manifest.json").exists()
