"""DNA reads: VirNucPro's chunking, six-frame translation and frame filter, rule for rule.

The reference below transcribes VirNucPro's units.py (split_fasta_chunk, translate_dna,
identify_seq; https://github.com/Li-Jing-1997/VirNucPro) with Biopython records, as there.
The per-chunk functions of `virnucpro.data.reads` are held to it, and the vectorised path of
`virnucpro.data.six_frames` (what the index and the loaders run) to both.
"""

import numpy as np
import pytest
from Bio.Data.CodonTable import standard_dna_table
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.data import (
    FRAME_LABELS,
    InputError,
    build_index,
    chunk_starts,
    kept_frames,
    translate_frame,
)
from virnucpro.data.six_frames import MAX_CHUNK_SIZE, chunk_table, frame_table, translate_chunks

CODONS = dict(standard_dna_table.forward_table)
CODONS.update(dict.fromkeys(standard_dna_table.stop_codons, "*"))


def reference_chunks(read_id: str, sequence: str, chunk_size: int) -> list[tuple[str, str]]:
    record = SeqRecord(Seq(sequence), id=read_id)
    seq_length = len(record.seq)
    num_chunks = -(-seq_length // chunk_size)
    repeat_length = num_chunks * chunk_size - seq_length
    lower_int = int(repeat_length / num_chunks)
    upper_int = lower_int + 1
    need_up = repeat_length - sum([lower_int] * (num_chunks - 1))
    steps = [upper_int] * need_up + [lower_int] * (num_chunks - 1 - need_up) + [0]
    chunks, move_step = [], 0
    for a, b in zip(range(0, seq_length, chunk_size), steps, strict=False):
        chunk = (
            record[a - move_step : a - move_step + chunk_size]
            if a > 1
            else record[a : a + chunk_size]
        )
        chunks.append((f"{read_id}_chunk_{a // chunk_size + 1}", str(chunk.seq)))
        move_step += b
    return chunks


def reference_proteins(seqid: str, sequence: str) -> list[tuple[str, str]]:
    def reverse_complement(s):
        return s.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]

    def frame(s, f):
        return "".join(CODONS.get(s[i : i + 3], "") for i in range(f, len(s) - 2, 3))

    proteins = [frame(sequence, f) for f in range(3)]
    proteins += [frame(reverse_complement(sequence), f) for f in range(3)]
    labels = ["F1", "F2", "F3", "R1", "R2", "R3"]
    return [(seqid + lab, p) for lab, p in zip(labels, proteins, strict=True) if "*" not in p and p]


def test_codon_table_is_the_standard_code():
    assert len(CODONS) == 64
    for codon, amino_acid in CODONS.items():
        assert translate_frame(codon.encode(), 0) == amino_acid.encode(), codon
    assert kept_frames(b"ATGGCC") == [
        (0, b"MA"),
        (1, b"W"),
        (2, b"G"),
        (3, b"GH"),
        (4, b"A"),
        (5, b"P"),
    ]
    ambiguous = "ATGNCCTAAGRC"
    labels = ["F1", "F2", "F3", "R1", "R2", "R3"]
    ours = [("x" + labels[f], p.decode()) for f, p in kept_frames(ambiguous.encode())]
    assert ours == reference_proteins("x", ambiguous)


def test_chunk_examples_including_virnucpro_short_last_chunk():
    assert chunk_starts(900, 300) == [0, 300, 600]
    assert chunk_starts(650, 300) == [0, 216, 432]
    assert chunk_starts(100, 300) == [0]
    assert chunk_starts(301, 300) == [0, 150]
    assert chunk_starts(1000, 300) == [0, 249, 498, 747]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3000), st.sampled_from([300, 500, 7, 3]))
def test_chunk_starts_equal_virnucpro(length, chunk_size):
    sequence = "ACGT" * (length // 4) + "A" * (length % 4)
    starts = chunk_starts(length, chunk_size)
    ours = [sequence[s : s + chunk_size] for s in starts]
    assert ours == [c for _, c in reference_chunks("r", sequence, chunk_size)]


reads = st.lists(
    st.text(alphabet="ACGTACGTACGTNRY", min_size=1, max_size=1600), min_size=1, max_size=6
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reads, st.sampled_from([300, 500]), st.booleans())
def test_index_of_reads_equals_virnucpro(write_fasta, sequences, chunk_size, lower):
    records = [(f"read{i}", s.lower() if lower else s) for i, s in enumerate(sequences)]
    expected = [
        protein
        for read_id, sequence in records
        for chunk_id, chunk in reference_chunks(read_id, sequence.upper(), chunk_size)
        for protein in reference_proteins(chunk_id, chunk)
    ]
    if not expected:
        return
    index = build_index(write_fasta(records), "dna", chunk_size)
    assert index.ids == [name for name, _ in expected]
    assert index.read_many(range(len(index))) == [p.encode() for _, p in expected]
    assert index.lengths.tolist() == [len(p) for _, p in expected]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ACGTacgt", min_size=1, max_size=400))
def test_frames_of_acgt_chunks_equal_biopython_translate(chunk):
    """Without ambiguous bases, VirNucPro's frames are Biopython's translations (N-containing
    codons are where they differ: Biopython gives X, VirNucPro skips the codon)."""
    upper = chunk.upper()
    expected = []
    for frame in range(6):
        strand = Seq(upper) if frame < 3 else Seq(upper).reverse_complement()
        codons = strand[frame % 3 : frame % 3 + 3 * ((len(upper) - frame % 3) // 3)]
        expected.append(str(codons.translate()).encode())
    assert [translate_frame(upper.encode(), frame) for frame in range(6)] == expected
    bases = np.frombuffer(upper.encode(), dtype=np.uint8)
    blob, lengths = translate_chunks(bases, [0] * 6, [len(upper)] * 6, np.arange(6))
    ends = np.cumsum(lengths).tolist()
    assert [blob[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)] == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 1300), min_size=1, max_size=8), st.integers(3, 700))
def test_chunk_table_equals_chunk_starts(read_lengths, chunk_size):
    read, number, start, length = chunk_table(np.array(read_lengths), chunk_size)
    expected = [
        (r, k, s, min(chunk_size, n - s))
        for r, n in enumerate(read_lengths)
        for k, s in enumerate(chunk_starts(n, chunk_size), 1)
    ]
    assert (
        list(zip(read.tolist(), number.tolist(), start.tolist(), length.tolist(), strict=True))
        == expected
    )


dna = st.text(alphabet="ACGTACGTACGTacgtNnRY-", min_size=1, max_size=900)


@settings(max_examples=60, deadline=None)
@given(st.lists(dna, min_size=1, max_size=8), st.sampled_from([3, 4, 5, 30, 300]))
def test_vectorised_frames_equal_the_per_chunk_reference(sequences, chunk_size):
    """frame_table and translate_chunks over one buffer equal kept_frames and translate_frame
    chunk by chunk."""
    reads = [s.upper().encode() for s in sequences]
    read, _, start, length = chunk_table(np.array([len(r) for r in reads]), chunk_size)
    read_starts = np.cumsum([len(r) for r in reads]) - [len(r) for r in reads]
    bases = np.frombuffer(b"".join(reads), dtype=np.uint8)
    where = read_starts[read] + start
    residues, kept = frame_table(bases, where, length)
    chunks = [
        reads[r][s : s + chunk_size] for r, s in zip(read.tolist(), start.tolist(), strict=True)
    ]
    expected = [[protein for frame, protein in kept_frames(chunk)] for chunk in chunks]
    rows, frames = np.nonzero(kept)
    blob, lengths = translate_chunks(bases, where[rows], length[rows], frames)
    assert lengths.tolist() == residues[kept].tolist()
    got: list[list[bytes]] = [[] for _ in chunks]
    ends = np.cumsum(lengths).tolist()
    for row, end, n in zip(rows.tolist(), ends, lengths.tolist(), strict=True):
        got[row].append(blob[end - n : end])
    assert got == expected
    every = np.repeat(np.arange(len(chunks)), 6)
    frame_of = np.tile(np.arange(6), len(chunks))
    blob, lengths = translate_chunks(bases, where[every], length[every], frame_of)
    ends = np.cumsum(lengths).tolist()
    assert [blob[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)] == [
        translate_frame(chunks[c], f)
        for c, f in zip(every.tolist(), frame_of.tolist(), strict=True)
    ]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(dna, min_size=1, max_size=6), st.sampled_from([4, 300]), st.randoms())
def test_provenance_and_reads_in_any_order(write_fasta, sequences, chunk_size, shuffler):
    """read_index/chunk/frame name each protein's read, chunk and frame; read_many returns
    any subset in the order asked, a read's frames translated together or apart."""
    records = [(f"r{i}", s) for i, s in enumerate(sequences)]
    expected = []
    empty = 0
    chunks = 0
    for r, (_, sequence) in enumerate(records):
        bases = sequence.upper().encode()
        for k, s in enumerate(chunk_starts(len(bases), chunk_size), 1):
            kept = kept_frames(bases[s : s + chunk_size])
            chunks += 1
            empty += not kept
            expected += [(r, k, frame, protein) for frame, protein in kept]
    if not expected:
        return
    index = build_index(write_fasta(records, wrap=7), "dna", chunk_size)
    assert index.read_ids == [name for name, _ in records]
    assert index.read_index.tolist() == [e[0] for e in expected]
    assert index.chunk.tolist() == [e[1] for e in expected]
    assert index.frame.tolist() == [e[2] for e in expected]
    assert (index.chunks, index.chunks_without_protein) == (chunks, empty)
    assert index.ids == [
        f"{index.read_ids[r]}_chunk_{k}{FRAME_LABELS[f]}" for r, k, f, _ in expected
    ]
    order = list(range(len(index)))
    shuffler.shuffle(order)
    subset = order[: max(1, len(order) // 2)]
    assert index.read_many(subset) == [expected[i][3] for i in subset]
    assert index.ids_of(subset) == [index.ids[i] for i in subset]
    assert [index.read(i) for i in subset] == [expected[i][3] for i in subset]
    assert index.nonstandard.tolist() == [0] * len(index)


def test_chunk_size_bounds(write_fasta):
    path = write_fasta([("r", "ACGT" * 10)])
    with pytest.raises(InputError, match="at most"):
        build_index(path, "dna", MAX_CHUNK_SIZE + 1)
