"""--long window: every residue is the mean of its windows' fair-esm rows, each window
embedded alone with its own BOS/EOS; BOS from the first window, EOS from the last."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data import window_spans
from virnucpro.infer import PackedESM2
from virnucpro.infer.windows import WindowedForward, window_plan_lengths

AMINO = "ACDEFGHIKLMNPQRSTVWY"
MAX_LENGTH, OVERLAP = 12, 4


def packed(sequences, tokens_of):
    rows = [tokens_of(seq) for seq in sequences]
    cu = torch.tensor(np.cumsum([0, *(len(r) for r in rows)]), dtype=torch.int32)
    return torch.cat(rows), cu, max(len(r) for r in rows)


def expected_rows(model, sequence, tokens_of, layer):
    """Per whole-sequence row: the mean over the windows holding it (fair-esm alone)."""
    total = torch.zeros(len(sequence) + 2, model.embed_dim, dtype=torch.float64)
    count = torch.zeros(len(sequence) + 2, 1, dtype=torch.float64)
    spans = window_spans(len(sequence), MAX_LENGTH, OVERLAP)
    for number, (first, last) in enumerate(spans):
        with torch.no_grad():
            out = model(tokens_of(sequence[first:last])[None], repr_layers=[layer])
        rows = out["representations"][layer][0].double()
        total[first + 1 : last + 1] += rows[1:-1]
        count[first + 1 : last + 1] += 1
        if number == 0:
            total[0], count[0] = rows[0], 1
        if number == len(spans) - 1:
            total[-1], count[-1] = rows[-1], 1
    return (total / count).float()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5), st.integers(0, 2**16))
def test_windows_stitch_to_the_mean_of_their_rows(make_esm2, packing, lengths, seed):
    tokens_of = packing.tokens_of
    model = make_esm2(2, 16, 2, seed=4)
    rng = np.random.default_rng(seed)
    sequences = ["".join(rng.choice(list(AMINO), n)) for n in lengths]
    input_ids, cu, max_seqlen = packed(sequences, tokens_of)
    windowed = WindowedForward(PackedESM2(model), MAX_LENGTH, OVERLAP)
    with torch.no_grad():
        hidden = windowed(input_ids, cu, max_seqlen, [1, 2])
    for layer in (1, 2):
        assert hidden[layer].shape == (len(input_ids), 16)
        for i, sequence in enumerate(sequences):
            got = hidden[layer][cu[i] : cu[i + 1]]
            want = expected_rows(model, sequence, tokens_of, layer)
            torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


def test_short_batches_take_the_plain_forward(make_esm2, packing):
    tokens_of = packing.tokens_of
    model = make_esm2(2, 16, 2, seed=4)
    forward = PackedESM2(model)
    input_ids, cu, max_seqlen = packed(["MKTAYIAK", "GG"], tokens_of)
    with torch.no_grad():
        plain = forward(input_ids, cu, max_seqlen, [2])
        windowed = WindowedForward(forward, MAX_LENGTH, OVERLAP)(input_ids, cu, max_seqlen, [2])
    assert torch.equal(plain[2], windowed[2])


def test_plan_lengths_count_each_windows_tokens():
    lengths = np.array([5, 12, 13, 20, 21])
    windows = [len(window_spans(int(n), MAX_LENGTH, OVERLAP)) for n in lengths]
    assert windows == [1, 1, 2, 2, 3]
    costs = window_plan_lengths(lengths, MAX_LENGTH, OVERLAP)
    assert costs.tolist() == [5, 12, 2 * 14 - 2, 2 * 14 - 2, 3 * 14 - 2]
