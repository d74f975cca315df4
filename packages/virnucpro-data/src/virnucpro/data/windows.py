"""Windows over a sequence longer than the model's length, for `--long window`.

Windows of `max_length` residues overlap by `overlap` residues (stride `max_length - overlap`);
the last window is moved back to end at the sequence's end, so it may overlap its neighbour
by more. A sequence no longer than `max_length` is one window. Each window is embedded alone;
a residue's representation is the mean over the windows that hold it.
"""

import numpy as np


def _check(max_length: int, overlap: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 residue, got {max_length}")
    if not 0 <= overlap < max_length:
        raise ValueError(f"overlap must be in 0..max_length-1 ({max_length - 1}), got {overlap}")


def window_spans(length: int, max_length: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) residue spans of the windows of a sequence of `length` residues."""
    _check(max_length, overlap)
    if length <= max_length:
        return [(0, length)]
    stride = max_length - overlap
    starts = list(range(0, length - max_length, stride))
    return [(start, start + max_length) for start in starts] + [(length - max_length, length)]


def window_counts(lengths: np.ndarray, max_length: int, overlap: int) -> np.ndarray:
    """How many windows `window_spans` gives each length (int64), for planning batches."""
    _check(max_length, overlap)
    lengths = np.asarray(lengths, dtype=np.int64)
    stride = max_length - overlap
    return 1 + np.maximum(0, -(-(lengths - max_length) // stride))
