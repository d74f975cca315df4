"""Non-standard characters: counted per sequence, each one's fate as documented, a summary,
and strict refusing them before any work."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.data import InputError, build_index, tokenize
from virnucpro.data.tokenizer import UNK_IDX

STANDARD = b"LAGVSERTIDPKQNFYMHWCXBUZO"


def reference(body: str, wrap: int = 0) -> tuple[bytes, int, int]:
    """(residues, non-standard count, unknown count) of a record body written in lines of
    `wrap` characters (0: one line), byte by byte: line breaks and whitespace at either end of
    a line go; spaces, tabs and digits are dropped and counted; '.', '-' kept and counted;
    trailing '*' stripped, not counted; any other byte not a standard letter is counted and
    stays (an `<unk>`)."""
    step = wrap or max(1, len(body))
    lines = [body[i : i + step].encode() for i in range(0, len(body), step)]
    kept = []
    counted = []
    for line in lines:
        for byte in line.strip(b" \t\r\v\f"):
            if bytes([byte]).upper() in STANDARD:
                kept.append(bytes([byte]).upper()[0])
                continue
            counted.append(len(kept))
            if byte not in b" \t\v\f0123456789":
                kept.append(byte)
    while kept and kept[-1] == ord("*"):
        kept.pop()
        counted.remove(len(kept))
    unknown = sum(byte not in STANDARD + b".-" for byte in kept)
    return bytes(kept), len(counted), unknown


def test_spaces_and_digits_are_dropped_and_counted(write_fasta):
    path = write_fasta(
        [("a", "MKT AYI 123"), ("b", "mktayi"), ("c", "MKJ*T-.*"), ("d", "MK\tT#L*")], wrap=0
    )
    index = build_index(path)
    assert index.read_many(range(4)) == [b"MKTAYI", b"MKTAYI", b"MKJ*T-.", b"MKT#L"]
    assert index.lengths.tolist() == [6, 6, 7, 5]
    assert index.nonstandard.tolist() == [5, 0, 4, 2]
    assert index.unknown_residues.tolist() == [0, 0, 2, 1]
    summary = index.nonstandard_summary(limit=2)
    assert summary.sequences == 3
    assert summary.first_ids == ["a", "c"]
    assert summary.characters == {
        "' '": (2, "dropped"),
        "'-'": (1, "kept"),
        "'.'": (1, "kept"),
        "'1'": (1, "dropped"),
        "'2'": (1, "dropped"),
        "'3'": (1, "dropped"),
        "'#'": (1, "<unk>"),
        "'*'": (1, "<unk>"),
        "'J'": (1, "<unk>"),
        "'\\t'": (1, "dropped"),
    }
    line = summary.line()
    assert line.startswith("3 sequences held non-standard characters (a, c, ...): ")
    assert "' ' x2 dropped" in line and "'J' x1 <unk>" in line and "\n" not in line


def test_unknown_characters_become_unk_tokens_in_place(write_fasta):
    index = build_index(write_fasta([("a", "MKJ*Té")]))
    assert index.read(0) == "MKJ*Té".encode()
    assert index.nonstandard.tolist() == [4]
    assert index.unknown_residues.tolist() == [4]
    expected = [*tokenize(b"MK").tolist(), UNK_IDX, UNK_IDX, *tokenize(b"T").tolist()]
    assert tokenize(index.read(0)).tolist() == [*expected, UNK_IDX, UNK_IDX]
    assert index.nonstandard_summary().characters["'\\xc3'"] == (1, "<unk>")


def test_clean_input_has_nothing_to_say(write_fasta):
    records = [("a", "mkTAYIXBUZO*"), ("b", "LL**"), ("c", "MKT \t  AYI")]
    index = build_index(write_fasta(records, wrap=5, newline="\r\n"))
    assert index.read(2) == b"MKTAYI"
    assert index.nonstandard.tolist() == [0, 0, 0]
    summary = index.nonstandard_summary()
    assert (summary.sequences, summary.first_ids, summary.characters) == (0, [], {})
    assert summary.line() == ""


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(alphabet="MKTAYIJmkx*.- 1\t#é", min_size=1, max_size=40).filter(
            lambda body: reference(body)[0]
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([0, 3]),
)
def test_counts_and_residues_equal_the_character_by_character_rule(write_fasta, bodies, wrap):
    index = build_index(write_fasta([(f"s{i}", b) for i, b in enumerate(bodies)], wrap=wrap))
    expected = [reference(body, wrap) for body in bodies]
    assert index.read_many(range(len(bodies))) == [e[0] for e in expected]
    assert index.nonstandard.tolist() == [e[1] for e in expected]
    assert index.unknown_residues.tolist() == [e[2] for e in expected]
    summary = index.nonstandard_summary(limit=len(bodies))
    assert summary.first_ids == [f"s{i}" for i, e in enumerate(expected) if e[1]]
    assert sum(count for count, _ in summary.characters.values()) == sum(e[1] for e in expected)


def test_strict_refuses_the_first_offending_record_in_one_line(write_fasta):
    path = write_fasta([("ok", "MKTAYI*"), ("bad", "MKT AYI 12J"), ("worse", "##")])
    with pytest.raises(InputError) as caught:
        build_index(path, strict=True)
    assert str(caught.value) == (
        f"{path}: record #2 'bad' holds non-standard characters ' ', '1', '2', 'J' "
        "(5 in all); fix the sequence or run without strict"
    )


def test_strict_accepts_standard_input_and_dna(write_fasta):
    assert len(build_index(write_fasta([("a", "mktayiXBUZO*")]), strict=True)) == 1
    reads = write_fasta([("r", "ATGGCCNNATGGCC")])
    assert len(build_index(reads, "dna", 300, strict=True)) > 0
