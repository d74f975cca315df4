"""The data package alone: none of the other packages' dependencies, FASTA to packed batches."""

import gzip
import importlib.util
import subprocess
import sys

import pytest

from virnucpro.data import (
    PackedBatchDataset,
    build_index,
    create_async_dataloader,
    plan_batches,
    tokenize,
)

OTHERS = ["esm", "h5py", "typer", "rich", "pluggy"]


@pytest.mark.parametrize("module", [m for m in OTHERS if m != "pluggy"])
def test_other_dependencies_are_absent(module):
    assert importlib.util.find_spec(module) is None, f"{module} must not be installed here"


def test_data_package_imports_none_of_them():
    """pytest itself needs pluggy, so pluggy is proven unused by import, not by absence."""
    code = "import sys, virnucpro.data; print(sorted(set(sys.argv[1:]) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code, *OTHERS], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_fasta_streams_into_packed_batches(tmp_path):
    sequences = {f"p{i}": "MKTAYIAKQRQISFVKSHFSRQ"[: 3 + i % 19] * (1 + i % 4) for i in range(60)}
    text = "".join(f">{name}\n{seq.lower()}*\n" for name, seq in sequences.items())
    path = tmp_path / "proteins.fa.gz"
    path.write_bytes(gzip.compress(text.encode()))
    index = build_index([path])
    batches = plan_batches(index.lengths, token_budget=256)
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches), batch_size=None, num_workers=2, prefetch_factor=2
    )
    seen = []
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        assert cu[-1] == len(batch["input_ids"]) <= 256
        for k, (name, i) in enumerate(
            zip(batch["sequence_ids"], batch["indices"].tolist(), strict=True)
        ):
            expected = [0, *tokenize(sequences[name]).tolist(), 2]
            assert batch["input_ids"][cu[k] : cu[k + 1]].tolist() == expected
            seen.append(i)
    assert sorted(seen) == list(range(len(sequences)))


def test_dna_reads_stream_into_packed_batches(tmp_path):
    codons = b"ATGGCCAAAGGCTTTCTGCAGATCCGC"
    reads = {f"r{i}": codons[i % 9 :] * (3 + i % 17) for i in range(40)}
    path = tmp_path / "reads.fa"
    path.write_text("".join(f">{name}\n{bases.decode()}\n" for name, bases in reads.items()))
    index = build_index([path], input_type="dna", chunk_size=300)
    assert set(index.read_ids) == set(reads)
    batches = plan_batches(index.lengths, token_budget=512)
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches), batch_size=None, num_workers=2, prefetch_factor=2
    )
    seen = []
    for batch in loader:
        for name, i in zip(batch["sequence_ids"], batch["indices"].tolist(), strict=True):
            assert name == index.id(i)
            seen.append(i)
    assert sorted(seen) == list(range(len(index)))
