"""Token-budget packing: the plan of batches, its honest efficiency, and the split over ranks.

A sequence costs `min(len, max_length) + 2` tokens (BOS and EOS). The plan never drops a
sequence: one that costs more than the budget gets a batch of its own.
"""

import heapq
from collections.abc import Sequence

import numpy as np


def sequence_costs(lengths: np.ndarray, max_length: int = 1022) -> np.ndarray:
    """Tokens each sequence takes in a packed batch (residues after truncation, BOS, EOS)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0 (0 = no truncation), got {max_length}")
    truncated = np.minimum(lengths, max_length) if max_length else lengths
    return truncated + 2


def plan_batches(
    lengths: np.ndarray,
    token_budget: int,
    max_length: int = 1022,
    exclude: np.ndarray | Sequence[int] | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Pack input indices into batches of at most `token_budget` tokens.

    Longest first, each batch topped up with the shortest sequences left (two pointers over
    the sorted costs: O(N log N), deterministic, ties broken by input index). Indices in
    `exclude` (e.g. already embedded) are left out; every other index appears exactly once.
    The batch order is then shuffled with `seed`, so long and short batches mix and the
    throughput (and a progress bar's estimate) stays steady. Each batch's indices are sorted.
    """
    if token_budget < 3:
        raise ValueError(f"token_budget must be at least 3 tokens, got {token_budget}")
    costs = sequence_costs(lengths, max_length)
    todo = np.ones(len(costs), dtype=bool)
    if exclude is not None:
        todo[np.asarray(exclude, dtype=np.int64)] = False
    indices = np.flatnonzero(todo)
    order = indices[np.lexsort((indices, -costs[indices]))]
    sorted_costs = costs[order].tolist()
    batches = []
    head, tail = 0, len(order) - 1
    while head <= tail:
        first = head
        used = sorted_costs[head]
        head += 1
        while head <= tail and used + sorted_costs[head] <= token_budget:
            used += sorted_costs[head]
            head += 1
        last = tail
        while tail >= head and used + sorted_costs[tail] <= token_budget:
            used += sorted_costs[tail]
            tail -= 1
        batch = np.concatenate((order[first:head], order[tail + 1 : last + 1]))
        batches.append(np.sort(batch))
    permutation = np.random.default_rng(seed).permutation(len(batches))
    return [batches[p] for p in permutation]


def batch_tokens(
    batches: Sequence[np.ndarray], lengths: np.ndarray, max_length: int = 1022
) -> np.ndarray:
    """Real tokens (residues after truncation plus BOS and EOS) of every batch."""
    costs = sequence_costs(lengths, max_length)
    return np.array([int(costs[b].sum()) for b in batches], dtype=np.int64)


def packing_efficiency(
    batches: Sequence[np.ndarray], lengths: np.ndarray, token_budget: int, max_length: int = 1022
) -> float:
    """Real tokens / tokens paid for, where each batch pays its budget (or its own size when a
    lone sequence exceeds the budget): a fraction in (0, 1], never above 1."""
    tokens = batch_tokens(batches, lengths, max_length)
    if len(tokens) == 0:
        return 1.0
    return float(tokens.sum() / np.maximum(tokens, token_budget).sum())


def split_for_rank(
    batches: Sequence[np.ndarray],
    rank: int,
    world_size: int,
    lengths: np.ndarray,
    max_length: int = 1022,
) -> list[np.ndarray]:
    """Rank `rank`'s share of a plan: disjoint across ranks, token-balanced, deterministic.

    Batches go, heaviest first (ties by plan position), to the rank with the fewest tokens so
    far (ties to the lowest rank); each rank keeps its batches in plan order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    tokens = batch_tokens(batches, lengths, max_length)
    heaviest_first = np.lexsort((np.arange(len(tokens)), -tokens))
    loads = [(0, r) for r in range(world_size)]
    mine = []
    for b in heaviest_first.tolist():
        load, owner = heapq.heappop(loads)
        if owner == rank:
            mine.append(b)
        heapq.heappush(loads, (load + int(tokens[b]), owner))
    return [batches[b] for b in sorted(mine)]
