"""Splitting a packed batch (docs/design.md) by sequences, for out-of-memory retries."""

from __future__ import annotations

from typing import Any

import torch

PackedBatch = dict[str, Any]


def split_packed_batch(batch: PackedBatch, at: int) -> tuple[PackedBatch, PackedBatch]:
    """The first `at` sequences and the rest, each a complete packed batch on the host."""
    cu = batch["cu_seqlens"]
    n = int(batch["num_sequences"])
    if not 0 < at < n:
        raise ValueError(f"cannot split a batch of {n} sequences at {at}")
    cut = int(cu[at])
    first_cu = cu[: at + 1].clone()
    second_cu = (cu[at:] - cut).to(cu.dtype)
    return (
        _part(batch, slice(0, at), batch["input_ids"][:cut], first_cu),
        _part(batch, slice(at, n), batch["input_ids"][cut:], second_cu),
    )


def _part(
    batch: PackedBatch, rows: slice, input_ids: torch.Tensor, cu_seqlens: torch.Tensor
) -> PackedBatch:
    sizes = cu_seqlens[1:] - cu_seqlens[:-1]
    return {
        "input_ids": input_ids,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(sizes.max()),
        "sequence_ids": list(batch["sequence_ids"][rows]),
        "num_sequences": rows.stop - rows.start,
        "indices": batch["indices"][rows],
        "lengths": batch["lengths"][rows],
        "truncated": batch["truncated"][rows],
    }
