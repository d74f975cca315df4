"""DNA reads: VirNucPro's chunking, six-frame translation and frame filter, rule for rule.

The reference below transcribes VirNucPro's units.py (split_fasta_chunk, translate_dna,
identify_seq; https://github.com/Li-Jing-1997/VirNucPro) with Biopython records, as there.
"""

from Bio.Data.CodonTable import standard_dna_table
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.data import build_index, chunk_starts, kept_frames, translate_frame

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
