"""assign_files_by_size: every file once, loads balanced by sequence count."""

import gzip

from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.infer.file_assignment import assign_files_by_size, count_sequences


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20),
    workers=st.integers(min_value=1, max_value=6),
)
def test_every_file_once_and_loads_within_the_largest_file(counts, workers):
    files = [f"f{i}.fa" for i in range(len(counts))]
    sizes = dict(zip(files, counts, strict=True))
    assignment = assign_files_by_size(files, workers, counts=sizes)
    assert len(assignment) == workers
    assert sorted(f for part in assignment for f in part) == sorted(files)
    loads = [sum(sizes[f] for f in part) for part in assignment]
    assert max(loads) - min(loads) <= max(counts, default=0)


def test_counts_records_of_plain_and_gzip_fasta(tmp_path):
    plain = tmp_path / "a.fasta"
    plain.write_text(">x\nMKV\n>y\nAC\nDE\n>z\nW\n")
    packed = tmp_path / "b.fa.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(">p\nMK\n")
    assert count_sequences(plain) == 3
    assert count_sequences(packed) == 1
    assert assign_files_by_size([packed, plain], 2) == [[plain], [packed]]
