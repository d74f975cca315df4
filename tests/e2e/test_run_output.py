"""`virnucpro run` output equals fair-esm's own forward, per sequence, in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from virnucpro.data import build_index

MAX_LENGTH = 80
ROOT = Path(__file__).resolve().parents[2]


def fasta_records(path) -> list[tuple[str, str]]:
    records = []
    for block in path.read_text().split(">")[1:]:
        header, *lines = block.splitlines()
        records.append((header.split()[0], "".join(lines)))
    return records


def test_run_equals_fair_esm_forward(
    virnucpro, proteins, tmp_path, fast_args, read_output, reference
):
    run_dir = tmp_path / "run"
    result = virnucpro(
        ["run", proteins, "-o", run_dir, *fast_args, "--max-length", MAX_LENGTH, "--workers", "1"]
    )
    assert result.returncode == 0, result.stderr
    assert f"output: {run_dir / 'embeddings.h5'}" in result.stdout
    assert "done: 30 sequences" in result.stdout
    out = read_output(run_dir / "embeddings.h5")
    records = fasta_records(proteins)
    assert list(out["ids"]) == [name for name, _ in records]
    full = np.array([len(residues) for _, residues in records])
    assert np.array_equal(out["lengths"], np.minimum(full, MAX_LENGTH))
    assert np.array_equal(out["truncated"], full > MAX_LENGTH)
    assert out["truncated"].any() and not out["truncated"].all()
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert note.startswith(
        f"note: {out['truncated'].sum()} sequences longer than {MAX_LENGTH} residues "
        f"truncated to {MAX_LENGTH} residues ("
    )
    expected = np.stack([reference(residues[:MAX_LENGTH]) for _, residues in records])
    np.testing.assert_allclose(out["embeddings"], expected, rtol=0, atol=1e-5)


def test_dna_reads_are_translated_and_embedded(
    virnucpro, tmp_path, fast_args, read_output, reference
):
    first_read = (ROOT / "examples" / "reads.fasta").read_text().split(">")[1]
    reads = tmp_path / "reads.fasta"
    reads.write_text(">" + first_read)
    run_dir = tmp_path / "run"
    result = virnucpro(
        ["run", reads, "-o", run_dir, *fast_args, "--input-type", "dna", "--workers", "0"]
    )
    assert result.returncode == 0, result.stderr
    index = build_index([reads], "dna", 300)
    out = read_output(run_dir / "embeddings.h5")
    assert len(index) > 3
    assert all(name.startswith("example_read_01_chunk_") for name in index.ids)
    assert list(out["ids"]) == index.ids
    expected = np.stack([reference(index.read(i).decode()) for i in range(len(index))])
    np.testing.assert_allclose(out["embeddings"], expected, rtol=0, atol=1e-5)
