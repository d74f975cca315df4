"""Windows for long sequences: the rule of `window_spans`, and `window_counts` agreeing."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data import window_counts, window_spans


def test_examples():
    assert window_spans(1000, 1022, 256) == [(0, 1000)]
    assert window_spans(1022, 1022, 256) == [(0, 1022)]
    assert window_spans(1500, 1022, 256) == [(0, 1022), (478, 1500)]
    assert window_spans(3000, 1022, 256) == [(0, 1022), (766, 1788), (1532, 2554), (1978, 3000)]
    assert window_spans(10, 4, 0) == [(0, 4), (4, 8), (6, 10)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 1100), st.data())
def test_windows_cover_every_residue_in_order(length, max_length, data):
    overlap = data.draw(st.integers(0, max_length - 1))
    spans = window_spans(length, max_length, overlap)
    starts = [start for start, _ in spans]
    assert spans[0][0] == 0
    assert spans[-1][1] == length
    assert all(0 < end - start <= max_length or length == 0 for start, end in spans)
    assert starts == sorted(set(starts))
    covered = np.zeros(length, dtype=int)
    for start, end in spans:
        covered[start:end] += 1
    assert covered.min(initial=1) >= 1
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end - next_start >= overlap
    assert all(b - a == max_length - overlap for a, b in itertools.pairwise(starts[:-1]))
    if length <= max_length:
        assert spans == [(0, length)]
    else:
        assert all(end - start == max_length for start, end in spans)
    assert window_counts(np.array([length]), max_length, overlap).tolist() == [len(spans)]


@pytest.mark.parametrize(("max_length", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_arguments(max_length, overlap):
    with pytest.raises(ValueError, match="must be"):
        window_spans(100, max_length, overlap)
    with pytest.raises(ValueError, match="must be"):
        window_counts(np.array([100]), max_length, overlap)
