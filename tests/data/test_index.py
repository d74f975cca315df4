"""The index pass: formats, normalisation, locations, fingerprint, and every input error."""

import gzip
import hashlib
import pickle
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.data import InputError, build_index
from virnucpro.data.background_hash import BackgroundHash


def test_wrapped_crlf_lower_case_and_stop_are_normalised(write_fasta):
    path = write_fasta([("a", "mktayiak*"), ("b", "LLXJ"), ("c", "G")], wrap=3, newline="\r\n")
    index = build_index(path)
    assert index.ids == ["a", "b", "c"]
    assert [index.read(i) for i in range(3)] == [b"MKTAYIAK", b"LLXJ", b"G"]
    assert index.lengths.tolist() == [8, 4, 1]
    assert index.unknown_residues.tolist() == [0, 1, 0]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 200), min_size=1, max_size=30),
    wrap=st.sampled_from([0, 1, 7, 60]),
    newline=st.sampled_from(["\n", "\r\n"]),
    gz=st.booleans(),
)
def test_every_record_read_back_by_index(write_fasta, lengths, wrap, newline, gz):
    rng = np.random.default_rng(len(lengths) * 7 + wrap)
    records = [
        (f"r{i}", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWYacdxz"), size=n)))
        for i, n in enumerate(lengths)
    ]
    index = build_index(write_fasta(records, wrap=wrap, newline=newline, gz=gz))
    assert len(index) == len(records)
    assert index.ids == [r[0] for r in records]
    assert [index.id(i) for i in range(len(index))] == index.ids
    assert index.lengths.tolist() == lengths
    assert index.read_many(range(len(index))) == [s.upper().encode() for _, s in records]


def test_many_files_in_order_and_gzip_equals_plain(write_fasta):
    first = write_fasta([("a", "MK"), ("b", "LLL")])
    second = write_fasta([("c", "GGGG")], gz=True, name="second.fa.gz")
    index = build_index([first, second])
    assert index.ids == ["a", "b", "c"]
    assert index.file_of.tolist() == [0, 0, 1]
    assert index.read(2) == b"GGGG"
    plain = build_index(write_fasta([("c", "GGGG")], name="second.fa"))
    zipped = build_index(second)
    assert plain.fingerprint == zipped.fingerprint


def test_fingerprint_follows_content_type_and_chunk_size(write_fasta):
    path = write_fasta([("a", "ACGTACGTAAATTTGGG" * 30)])
    base = build_index(path).fingerprint
    assert build_index(path).fingerprint == base
    assert (
        build_index(write_fasta([("a", "ACGTACGTAAATTTGGG" * 30)], name="x.fa")).fingerprint == base
    )
    assert build_index(write_fasta([("a", "ACGTACGTAAATTTGGA" * 30)])).fingerprint != base
    assert build_index(path, "dna", 300).fingerprint != base
    assert build_index(path, "dna", 300).fingerprint != build_index(path, "dna", 500).fingerprint
    assert re.fullmatch(r"[0-9a-f]{32}", base)


def test_gzip_spool_removed_with_its_index(write_fasta):
    index = build_index(write_fasta([("a", "MK")], gz=True))
    spool = index._sources[0]
    assert spool.exists()
    del index
    assert not spool.exists()


def test_spool_dir_is_kept(write_fasta, tmp_path):
    index = build_index(write_fasta([("a", "MKL")], gz=True), spool_dir=tmp_path / "spool")
    assert index.read(0) == b"MKL"
    assert list((tmp_path / "spool").iterdir()) == [index._sources[0]]


def one_line_error(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)
    return message


def test_missing_file(tmp_path):
    message = one_line_error(lambda: build_index([tmp_path / "nope.fa"]))
    assert message == f"{tmp_path / 'nope.fa'}: no such file; check the path"


def test_directory_is_refused(tmp_path):
    assert "is a directory" in one_line_error(lambda: build_index(tmp_path))


def test_not_fasta(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("id,sequence\na,MKT\n")
    message = one_line_error(lambda: build_index(path))
    assert message.startswith(f"{path}: not FASTA")


@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_file_without_records(tmp_path, content):
    path = tmp_path / "empty.fa"
    path.write_bytes(content)
    assert one_line_error(lambda: build_index(path)).startswith(f"{path}: no FASTA records")


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "empty.fa.gz"
    path.write_bytes(gzip.compress(b""))
    assert "no FASTA records" in one_line_error(lambda: build_index(path))


def test_damaged_gzip(tmp_path):
    path = tmp_path / "bad.fa.gz"
    path.write_bytes(gzip.compress(b">a\nMKT\n" * 1000)[:40])
    assert one_line_error(lambda: build_index(path)).startswith(f"{path}: cannot read")


@pytest.mark.parametrize("body", ["", "*", "\r\n"])
def test_empty_sequence_names_file_and_record(tmp_path, body):
    path = tmp_path / "x.fa"
    path.write_text(f">ok\nMKT\n>hollow desc\n{body}\n>next\nLL\n")
    message = one_line_error(lambda: build_index(path))
    assert message == (
        f"{path}: record #2 'hollow' has an empty sequence; remove it or give it residues"
    )


def test_last_record_without_sequence(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">ok\nMKT\n>tail")
    assert "record #2 'tail' has an empty sequence" in one_line_error(lambda: build_index(path))


def test_record_without_id(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a\nMK\n>  \nLL\n")
    assert one_line_error(lambda: build_index(path)) == (
        f"{path}: record #2 has no id after '>'; give it one"
    )


def test_duplicate_ids_listed_with_files_and_records(write_fasta):
    first = write_fasta([("a", "MK"), ("b", "LL"), ("a", "GG")])
    second = write_fasta([("b", "MK")] + [(f"d{i % 7}", "K") for i in range(30)])
    message = one_line_error(lambda: build_index([first, second]))
    assert message.startswith(
        f"duplicate ids (25 in all): 'a' ({first} record #1 and {first} record #3), "
        f"'b' ({first} record #2 and {second} record #1), "
    )
    assert message.count("record #") == 10
    assert message.endswith("; ids must be unique, rename them")


def test_bad_arguments(write_fasta):
    path = write_fasta([("a", "MK")])
    assert "input_type" in one_line_error(lambda: build_index(path, "rna"))
    assert "no input files" in one_line_error(lambda: build_index([]))


def test_reads_without_any_protein(write_fasta):
    path = write_fasta([("r", "NNNNNNNNNNNN")])
    assert "no read gives a protein" in one_line_error(lambda: build_index(path, "dna", 300))


def test_protein_provenance_is_one_record_per_sequence(write_fasta):
    index = build_index(write_fasta([("a", "MK"), ("b", "LLL")]))
    assert index.read_ids == ["a", "b"]
    assert index.read_index.tolist() == [0, 1]
    assert index.chunk.tolist() == [0, 0]
    assert index.frame.tolist() == [-1, -1]
    assert (index.chunks, index.chunks_without_protein) == (0, 0)
    assert index.ids_of([1, 0]) == ["b", "a"]


def test_index_pickles_with_everything(write_fasta):
    path = write_fasta([("r1", "ATGGCCAAA" * 40), ("r2", "NNNNNNNNN"), ("r3", "GGCATT" * 3)])
    index = build_index(path, "dna", 300)
    assert index.ids[:1] == ["r1_chunk_1F1"]
    copy = pickle.loads(pickle.dumps(index))
    assert copy.ids == index.ids
    assert copy.read_many(range(len(copy))) == index.read_many(range(len(index)))
    assert copy.chunks_without_protein == index.chunks_without_protein == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_background_hash_equals_hashing_in_line(blocks):
    """The fingerprint's hash runs on a thread: blocks still hash in the order given."""
    background = BackgroundHash(hashlib.sha256())
    for block in blocks:
        background.update(block)
    try:
        assert background.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    finally:
        background.close()
