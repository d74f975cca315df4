"""A plan cut into work units for the queue manager, and a unit minus what is done.

Units are runs of consecutive batches of the plan, so a unit's rows stay near each
other in input order. They shrink as the plan is handed out (guided scheduling): each
holds about ``remaining / (UNITS_PER_DEVICE x devices)`` sequences, never fewer than
``1 / TAIL_SHRINK`` of the first unit, so every device takes several large units
first and the last units are small: the devices finish together instead of one
working alone through a big last unit (two H200s idled about 9 s at the end of a
200,000-protein run with equal units). A dead worker loses little work either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from virnucpro.infer.queue_manager import WorkUnit

UNITS_PER_DEVICE = 8
MIN_UNIT_SEQUENCES = 8
TAIL_SHRINK = 4


def cut_into_units(
    batches: Sequence[np.ndarray],
    ids: Sequence[str],
    num_devices: int,
    units_per_device: int = UNITS_PER_DEVICE,
    min_sequences: int = MIN_UNIT_SEQUENCES,
) -> list[WorkUnit]:
    """Consecutive batches grouped into units of about remaining / (units_per_device x
    num_devices) sequences, shrinking to a quarter of the first unit (at least
    ``min_sequences``, never splitting a batch).

    A unit's payload is its list of batches (arrays of input indices); its description
    names its first and last id, so a failure report says which sequences it holds.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be at least 1, got {num_devices}")
    share = units_per_device * num_devices
    remaining = sum(len(batch) for batch in batches)
    floor = max(min_sequences, -(-remaining // (share * TAIL_SHRINK)), 1)
    units: list[WorkUnit] = []
    current: list[np.ndarray] = []
    count = 0
    for batch in batches:
        current.append(batch)
        count += len(batch)
        if count >= max(floor, -(-remaining // share)):
            units.append(_unit(len(units), current, count, ids))
            remaining -= count
            current, count = [], 0
    if current:
        units.append(_unit(len(units), current, count, ids))
    return units


def _unit(unit_id: int, batches: list[np.ndarray], count: int, ids: Sequence[str]) -> WorkUnit:
    first, last = ids[int(batches[0][0])], ids[int(batches[-1][-1])]
    return WorkUnit(unit_id, list(batches), count, f"{count} sequences, {first} .. {last}")


def without_done(batches: Sequence[np.ndarray], done: np.ndarray) -> tuple[list[np.ndarray], int]:
    """``batches`` without the input indices in ``done`` (empty batches dropped), and
    how many rows were removed: a re-queued unit skips what its dead worker checkpointed."""
    kept: list[np.ndarray] = []
    removed = 0
    for batch in batches:
        rest = batch[~np.isin(batch, done)]
        removed += len(batch) - len(rest)
        if len(rest):
            kept.append(rest)
    return kept, removed
