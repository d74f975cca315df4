"""Work units: every planned row in exactly one unit, in plan order; a retried unit
minus the done rows keeps every other row once (lesson 5)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.infer import cut_into_units, without_done


@st.composite
def plans(draw):
    sizes = draw(st.lists(st.integers(1, 12), min_size=0, max_size=40))
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(sum(sizes))
    return np.split(order, np.cumsum(sizes)[:-1]) if sizes else []


@settings(max_examples=40, deadline=None)
@given(plans(), st.integers(1, 8), st.integers(1, 20))
def test_units_hold_every_batch_once_in_plan_order(batches, devices, minimum):
    ids = [f"s{i}" for i in range(sum(len(b) for b in batches))]
    units = cut_into_units(batches, ids, devices, min_sequences=minimum)
    flat = [batch for unit in units for batch in unit.payload]
    assert len(flat) == len(batches)
    assert all(a is b for a, b in zip(flat, batches, strict=True))
    assert [u.unit_id for u in units] == list(range(len(units)))
    assert all(u.num_sequences == sum(len(b) for b in u.payload) for u in units)
    floor = max(minimum, -(-len(ids) // (8 * devices * 4)))
    assert all(u.num_sequences >= floor for u in units[:-1])
    handed = 0
    for unit in units[:-1]:
        # Each unit closes at the first batch that reaches its share of what is left.
        share = max(floor, -(-(len(ids) - handed) // (8 * devices)))
        assert unit.num_sequences - len(unit.payload[-1]) < share <= unit.num_sequences
        handed += unit.num_sequences


def test_units_shrink_towards_the_end():
    batches = [np.arange(i * 10, i * 10 + 10) for i in range(2000)]
    units = cut_into_units(batches, [f"s{i}" for i in range(20_000)], 2)
    sizes = [u.num_sequences for u in units]
    assert all(a >= b for a, b in itertools.pairwise(sizes[:-1]))
    assert sizes[0] == 1250 and min(sizes[:-1]) >= 1250 // 4
    assert 16 < len(units) < 16 * 3


@settings(max_examples=40, deadline=None)
@given(plans(), st.data())
def test_without_done_removes_exactly_the_done_rows(batches, data):
    rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    done = np.array(sorted(data.draw(st.sets(st.sampled_from(rows.tolist()))) if len(rows) else []))
    kept, removed = without_done(batches, done.astype(np.int64))
    left = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    assert removed == len(done)
    np.testing.assert_array_equal(left, rows[~np.isin(rows, done)])
    assert all(len(batch) for batch in kept)
