"""``--long window``: sequences longer than ``max_length`` residues embedded as
overlapping windows, stitched back as if the sequence had been embedded whole.

Windows hold ``max_length`` residues, overlap by ``overlap``, the last ends at the
sequence's end (:func:`virnucpro.data.window_spans`); each is embedded alone with its
own BOS and EOS. A residue's representation is the mean over the windows that hold it;
the sequence's BOS row is the first window's, its EOS row the last window's. The result
has the packed layout of the whole sequences, so every pooling (mean, max, bos,
per-token) is computed from it unchanged. Sums are float64: at most three windows
overlap, so the order of additions cannot change the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import torch

from virnucpro.data import window_counts, window_spans
from virnucpro.infer.registry import PackedForward


def window_plan_lengths(lengths: np.ndarray, max_length: int, overlap: int) -> np.ndarray:
    """What each sequence costs a batch in window mode, as a residue count: its windows'
    tokens (each ``max_length + 2``) less one BOS/EOS pair."""
    lengths = np.asarray(lengths, dtype=np.int64)
    windows = window_counts(lengths, max_length, overlap)
    return np.where(windows > 1, windows * (max_length + 2) - 2, lengths)


class WindowedForward:
    """A packed forward over whole sequences, computed window by window."""

    def __init__(self, forward: PackedForward, max_length: int, overlap: int) -> None:
        self.forward = forward
        self.max_length = max_length
        self.overlap = overlap

    def __call__(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Iterable[int],
    ) -> dict[int, torch.Tensor]:
        layers = list(repr_layers)
        if max_seqlen <= self.max_length + 2:
            return self.forward(input_ids, cu_seqlens, max_seqlen, layers)
        source, target, counts, window_cu = self._layout(cu_seqlens.cpu().numpy())
        device = input_ids.device
        windowed = input_ids.index_select(0, torch.from_numpy(source).to(device))
        hidden = self.forward(
            windowed,
            torch.from_numpy(window_cu).to(device=device, dtype=torch.int32),
            self.max_length + 2,
            layers,
        )
        index = torch.from_numpy(target).to(device)
        scale = torch.from_numpy(1.0 / counts).to(device).unsqueeze(1)
        stitched = {}
        for layer, states in hidden.items():
            total = torch.zeros((len(counts), states.shape[1]), dtype=torch.float64, device=device)
            total.index_add_(0, index, states.to(torch.float64))
            stitched[layer] = (total * scale)[:-1].to(states.dtype)
        return stitched

    def _layout(
        self, cu_seqlens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For the windowed batch: the packed row each of its tokens is read from
        (``source``, the window's BOS/EOS read from the sequence's), the row of the whole
        sequence it is added to (``target``: a window's BOS/EOS only for the first/last
        window), how many rows add to each whole row, and the windows' cu_seqlens."""
        source: list[np.ndarray] = []
        target: list[np.ndarray] = []
        ends = [0]
        for start, stop in itertools.pairwise(cu_seqlens.tolist()):
            residues = int(stop - start) - 2
            spans = window_spans(residues, self.max_length, self.overlap)
            for number, (first, last) in enumerate(spans):
                rows = np.arange(start + 1 + first, start + 1 + last)
                source.append(np.concatenate([[start], rows, [stop - 1]]))
                bos = start if number == 0 else -1
                eos = stop - 1 if number == len(spans) - 1 else -1
                target.append(np.concatenate([[bos], rows, [eos]]))
                ends.append(ends[-1] + len(rows) + 2)
        sources = np.concatenate(source)
        targets = np.concatenate(target)
        # BOS/EOS rows of inner windows are computed but belong to no whole row: they
        # go to a scratch row past the end, dropped below.
        scratch = int(cu_seqlens[-1])
        targets = np.where(targets < 0, scratch, targets)
        counts = np.bincount(targets, minlength=scratch + 1).astype(np.float64)
        counts[counts == 0] = 1.0
        return sources, targets, counts, np.asarray(ends, dtype=np.int64)
