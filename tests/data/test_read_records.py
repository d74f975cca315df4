"""The numpy parser of DNA records equals the record-by-record scan, and so does the index
built with it whatever the block and piece sizes."""

import re
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.data import InputError, build_index, read_pieces
from virnucpro.data.fasta_scan import _split_records, normalize_dna
from virnucpro.data.read_records import parse_reads
from virnucpro.data.reads import chunk_starts, kept_frames

header = st.text(alphabet="ab1 \t>_\r", min_size=0, max_size=12)
body = st.lists(st.text(alphabet="ACGTacgtN \t\r>", min_size=0, max_size=90), max_size=4)


@st.composite
def segments(draw) -> bytes:
    """Whole records, as `scan_segments` cuts them: starting at `>`, maybe no final newline."""
    records = draw(st.lists(st.tuples(header, body), min_size=1, max_size=8))
    text = "".join(">" + h + "\n" + "".join(line + "\n" for line in b) for h, b in records)
    cut = draw(st.sampled_from([0, 1]))
    return text.encode()[: len(text) - cut] if text.endswith("\n") else text.encode()


@settings(max_examples=300, deadline=None)
@given(segments(), st.integers(0, 10**6))
def test_parse_equals_record_by_record(segment, position):
    expected = list(_split_records(segment, position))
    records = parse_reads(segment, position)
    assert records.ids == [(h.split(None, 1) or [b""])[0] for h, _, _ in expected]
    assert records.body_spans.tolist() == [len(b) for _, b, _ in expected]
    offsets = [o for _, b, o in expected if b]
    assert records.body_offsets[records.body_spans > 0].tolist() == offsets
    assert records.base_counts.tolist() == [len(normalize_dna(b)) for _, b, _ in expected]
    assert records.bases == b"".join(normalize_dna(b) for _, b, _ in expected)


SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
SENSE = [codon for codon in SENSE if codon not in ("TAA", "TAG", "TGA")]
coding = st.lists(st.sampled_from([*SENSE, "acg", "NNA", "T"]), min_size=1, max_size=240)
reads = st.lists(coding.map("".join), min_size=1, max_size=40)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    reads,
    st.sampled_from([5, 64, 4096]),
    st.sampled_from([16, 100, 1 << 20]),
    st.booleans(),
    st.sampled_from([1, 3]),
)
def test_index_independent_of_block_and_piece_sizes_and_threads(
    write_fasta, monkeypatch, sequences, block, piece, gz, threads
):
    monkeypatch.setattr("virnucpro.data.fasta_scan.BLOCK_SIZE", block)
    monkeypatch.setattr(read_pieces, "PIECE_BYTES", piece)
    records = [(f"r{i}", s) for i, s in enumerate(sequences)]
    expected = [
        (f"r{i}_chunk_{k}", frame, protein)
        for i, (_, s) in enumerate(records)
        for k, start in enumerate(chunk_starts(len(s), 300), 1)
        for frame, protein in kept_frames(s.upper().encode()[start : start + 300])
    ]
    if not expected:
        return
    built = build_index(write_fasta(records, wrap=61, gz=gz), "dna", 300, threads=threads)
    assert built.read_ids == [name for name, _ in records]
    assert built.frame.tolist() == [frame for _, frame, _ in expected]
    assert built.read_many(range(len(built))) == [protein for _, _, protein in expected]
    monkeypatch.undo()
    assert built.fingerprint == build_index(built.files, "dna", 300).fingerprint


@pytest.mark.parametrize("piece", [8, 1 << 20])
def test_first_bad_record_named_across_pieces(tmp_path, monkeypatch, piece):
    monkeypatch.setattr(read_pieces, "PIECE_BYTES", piece)
    path = tmp_path / "reads.fa"
    path.write_text(">a\nACGTACGT\n>b\nACGT\n>c\n\n>\nACGT\n")
    with pytest.raises(InputError, match=r"record #3 'c' has an empty sequence"):
        build_index(path, "dna", threads=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("virnucpro-index")]
    path.write_text(">a\nACGTACGT\n>  \nACGT\n>c\n\n")
    with pytest.raises(InputError, match=r"record #2 has no id after '>'"):
        build_index(path, "dna")
    path.write_text(">a\nACGTACGT\n>  lead desc\nATGGCC\n")
    assert build_index(path, "dna").read_ids == ["a", "lead"]


def test_long_chunks_use_wide_counts(write_fasta):
    """A 4,000-base chunk: frames of more than 1,023 codons."""
    rng = np.random.default_rng(3)
    sense = [c for c in (a + b + d for a in "ACGT" for b in "ACGT" for d in "ACGT")]
    sense = [c for c in sense if c not in ("TAA", "TAG", "TGA")]
    read = "".join(rng.choice(sense, size=1333)) + "A"
    built = build_index(write_fasta([("long", read)]), "dna", 5000)
    expected = kept_frames(read.encode())
    assert built.frame.tolist() == [frame for frame, _ in expected]
    assert built.read_many(range(len(built))) == [protein for _, protein in expected]
    assert built.lengths.tolist() == [len(protein) for _, protein in expected]


def test_duplicate_reads_named_by_file_and_record_across_pieces(tmp_path, monkeypatch):
    """Record numbers restart in each file and run on across a file's pieces."""
    monkeypatch.setattr(read_pieces, "PIECE_BYTES", 8)
    first, second = tmp_path / "a.fa", tmp_path / "b.fa"
    first.write_text(">x\nACGTACGTACGT\n>y\nACGTAAA\n>z\nATGGCC\n")
    second.write_text(">w\nATGGCC\n>z\nATGGCCAAA\n>y\nACG\n")
    expected = (
        f"duplicate ids (2 in all): 'z' ({first} record #3 and {second} record #2), "
        f"'y' ({first} record #2 and {second} record #3)"
    )
    with pytest.raises(InputError, match=re.escape(expected)):
        build_index([first, second], "dna", threads=2)


@pytest.mark.parametrize("threads", [1, 4])
def test_pieces_read_before_a_read_error_come_out_before_it(threads):
    """A later block that cannot be read (a damaged gzip) must not hide a bad record in
    the pieces read before it: they are parsed and handed over first, in order."""

    def segments():
        for number in range(3):
            yield f">r{number}\nACGTACGT\n".encode(), 16 * number
        raise InputError("cannot read, damaged gzip?")

    seen = []
    with pytest.raises(InputError, match="damaged gzip"):
        for piece in read_pieces.parsed_pieces(segments(), 300, threads=threads):
            seen.extend(piece.records.ids)
    assert seen == [b"r0", b"r1", b"r2"]
