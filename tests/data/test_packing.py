"""Packing: every sequence exactly once, budget kept, deterministic, honest efficiency, and
disjoint token-balanced shares across ranks and workers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.data import (
    batch_tokens,
    batches_of_worker,
    packing_efficiency,
    plan_batches,
    records_of_worker,
    sequence_costs,
    split_for_rank,
)

lengths_st = st.lists(st.integers(1, 3000), min_size=0, max_size=300).map(
    lambda x: np.array(x, dtype=np.int64)
)
budgets = st.sampled_from([3, 50, 400, 1024, 4096])
max_lengths = st.sampled_from([0, 1, 100, 1022])


@settings(max_examples=50, deadline=None)
@given(lengths_st, budgets, max_lengths, st.integers(0, 3))
def test_plan_holds_every_index_once_within_budget(lengths, budget, max_length, seed):
    batches = plan_batches(lengths, budget, max_length, seed=seed)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    costs = sequence_costs(lengths, max_length)
    for batch in batches:
        assert len(batch) > 0
        assert costs[batch].sum() <= budget or len(batch) == 1
        assert batch.tolist() == sorted(batch.tolist())
    again = plan_batches(lengths, budget, max_length, seed=seed)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


@settings(max_examples=30, deadline=None)
@given(lengths_st, budgets, st.data())
def test_exclude_leaves_out_exactly_those(lengths, budget, data):
    exclude = (
        data.draw(st.sets(st.integers(0, max(0, len(lengths) - 1)))) if len(lengths) else set()
    )
    batches = plan_batches(lengths, budget, exclude=sorted(exclude))
    flat = sorted(np.concatenate(batches).tolist()) if batches else []
    assert flat == sorted(set(range(len(lengths))) - exclude)


def test_over_budget_sequence_gets_a_batch_alone():
    lengths = np.array([10, 5000, 10, 10])
    batches = plan_batches(lengths, 100, max_length=0)
    assert sorted(b.tolist() for b in batches) == [[0, 2, 3], [1]]


def test_efficiency_is_real_tokens_over_paid_tokens():
    lengths = np.array([98, 48, 5000])
    batches = [np.array([0]), np.array([1]), np.array([2])]
    # tokens 100, 50, 5002; paid 100, 100, 5002
    assert packing_efficiency(batches, lengths, 100, max_length=0) == pytest.approx(5152 / 5202)
    assert batch_tokens(batches, lengths, 0).tolist() == [100, 50, 5002]
    assert packing_efficiency(batches, lengths, 100, max_length=1022) == pytest.approx(1174 / 1224)


@settings(max_examples=30, deadline=None)
@given(lengths_st, budgets)
def test_efficiency_never_above_one(lengths, budget):
    batches = plan_batches(lengths, budget)
    assert 0 < packing_efficiency(batches, lengths, budget) <= 1


def test_uniform_lengths_pack_densely():
    lengths = np.random.default_rng(0).integers(60, 167, size=20000)
    batches = plan_batches(lengths, 4096)
    assert packing_efficiency(batches, lengths, 4096) > 0.99


@settings(max_examples=40, deadline=None)
@given(lengths_st, budgets, st.integers(1, 5))
def test_rank_shares_are_disjoint_complete_and_balanced(lengths, budget, world_size):
    batches = plan_batches(lengths, budget)
    shares = [split_for_rank(batches, r, world_size, lengths) for r in range(world_size)]
    position = {id(b): p for p, b in enumerate(batches)}
    flat = [position[id(b)] for share in shares for b in share]
    assert sorted(flat) == list(range(len(batches)))
    for share in shares:
        order = [position[id(b)] for b in share]
        assert order == sorted(order)
    tokens = batch_tokens(batches, lengths)
    loads = [int(batch_tokens(s, lengths).sum()) for s in shares]
    if len(batches):
        assert max(loads) - min(loads) <= tokens.max()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 200), st.integers(1, 4), st.integers(1, 4))
def test_worker_shares_cover_every_record_once(num_records, world_size, num_workers):
    seen = [
        i
        for rank in range(world_size)
        for worker in range(num_workers)
        for i in records_of_worker(num_records, rank, world_size, worker, num_workers)
    ]
    assert sorted(seen) == list(range(num_records))
    batches = [
        b for w in range(num_workers) for b in batches_of_worker(num_records, w, num_workers)
    ]
    assert sorted(batches) == list(range(num_records))


def test_bad_arguments():
    with pytest.raises(ValueError, match="token_budget"):
        plan_batches(np.array([1]), 2)
    with pytest.raises(ValueError, match="rank"):
        split_for_rank([], 2, 2, np.array([]))
    with pytest.raises(ValueError, match="max_length"):
        sequence_costs(np.array([1]), -1)
