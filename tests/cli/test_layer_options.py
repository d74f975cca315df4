"""--layers: numbers, ranges from either end, all and last; everything else refused in
one line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virnucpro.cli.options import parse_layers
from virnucpro.infer.job.config import resolve_layers


@pytest.mark.parametrize(
    ("text", "parsed", "resolved"),
    [
        ("last", None, (33,)),
        ("all", "all", tuple(range(34))),
        ("20-33", tuple(range(20, 34)), tuple(range(20, 34))),
        ("-4--1", (-4, -3, -2, -1), (30, 31, 32, 33)),
        ("0, 5-6 ,-1", (0, 5, 6, -1), (0, 5, 6, 33)),
    ],
)
def test_layers_parse_and_resolve(text, parsed, resolved):
    assert parse_layers(text) == parsed
    assert resolve_layers(parsed, 33) == resolved


@pytest.mark.parametrize("text", ["", "0--1", "5-3", "x", "1,1", "3-4,4", "-1-2"])
def test_bad_layers_are_refused(text):
    with pytest.raises(ValueError) as caught:
        parse_layers(text)
    assert "\n" not in str(caught.value)


@given(st.integers(0, 40), st.integers(0, 40))
def test_a_range_is_every_layer_between_its_ends(first, last):
    if first <= last:
        assert parse_layers(f"{first}-{last}") == tuple(range(first, last + 1))
        assert parse_layers(f"-{last + 1}--{first + 1}") == tuple(range(-last - 1, -first))
    else:
        with pytest.raises(ValueError):
            parse_layers(f"{first}-{last}")
