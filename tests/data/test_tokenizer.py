"""The byte table equals fair-esm's ESM-1b alphabet; packed tokens equal its batch_converter."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data import (
    BOS_IDX,
    EOS_IDX,
    ESM1B_TOKENS,
    MASK_IDX,
    PAD_IDX,
    UNK_IDX,
    VarlenCollator,
    pack_residues,
    tokenize,
)

esm = pytest.importorskip("esm")
ALPHABET = esm.Alphabet.from_architecture("ESM-1b")
RESIDUES = "".join(t for t in ALPHABET.all_toks if len(t) == 1)


def test_table_equals_fair_esm_for_every_byte():
    expected = [ALPHABET.get_idx(chr(b)) for b in range(256)]
    assert ESM1B_TOKENS.tolist() == expected
    assert ESM1B_TOKENS.dtype == np.int64


def test_special_indices_equal_fair_esm():
    assert (
        ALPHABET.cls_idx,
        ALPHABET.padding_idx,
        ALPHABET.eos_idx,
        ALPHABET.unk_idx,
        ALPHABET.mask_idx,
    ) == (BOS_IDX, PAD_IDX, EOS_IDX, UNK_IDX, MASK_IDX)


def test_unknown_and_lower_case_are_unk():
    assert tokenize("JmK*").tolist() == [UNK_IDX, UNK_IDX, ALPHABET.get_idx("K"), UNK_IDX]


sequences = st.lists(st.text(alphabet=RESIDUES, min_size=1, max_size=60), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(sequences, st.sampled_from([0, 1, 7, 1022]))
def test_packed_tokens_equal_fair_esm_batch_converter(seqs, max_length):
    converter = ALPHABET.get_batch_converter(max_length or None)
    _, _, padded = converter([(f"s{i}", s) for i, s in enumerate(seqs)])
    packed = pack_residues(
        [s.encode() for s in seqs], [""] * len(seqs), range(len(seqs)), max_length
    )
    cu = packed["cu_seqlens"].tolist()
    for row, (start, end) in enumerate(itertools.pairwise(cu)):
        assert packed["input_ids"][start:end].tolist() == padded[row, : end - start].tolist()
        assert padded[row, end - start :].eq(PAD_IDX).all()
    truncated = [max_length > 0 and len(s) > max_length for s in seqs]
    assert packed["truncated"].tolist() == truncated


@settings(max_examples=30, deadline=None)
@given(sequences)
def test_collator_own_table_equals_collator_with_fair_esm_converter(seqs):
    items = [{"id": f"s{i}", "sequence": s, "index": i} for i, s in enumerate(seqs)]
    own = VarlenCollator(max_tokens=10**6)(items)
    theirs = VarlenCollator(ALPHABET.get_batch_converter(), max_tokens=10**6)(items)
    for key in ("input_ids", "cu_seqlens", "indices", "lengths", "truncated"):
        assert torch_equal(own[key], theirs[key]), key
    assert own["max_seqlen"] == theirs["max_seqlen"]
    assert own["sequence_ids"] == theirs["sequence_ids"]


def torch_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.tolist() == b.tolist()
