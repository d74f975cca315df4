"""The packed batch: many sequences in one 1-D token tensor with cu_seqlens boundaries."""

from collections.abc import Sequence

import numpy as np
import torch

from virnucpro.data.tokenizer import BOS_IDX, EOS_IDX, ESM1B_TOKENS


def pack_residues(
    residues: Sequence[bytes],
    sequence_ids: Sequence[str],
    indices: Sequence[int] | np.ndarray,
    max_length: int = 1022,
    as_numpy: bool = False,
) -> dict:
    """Tokenize and pack, one vectorized table lookup for the whole batch.

    Returns the packed batch of docs/design.md: `input_ids` (int64, BOS + residues + EOS per
    sequence), `cu_seqlens` (int32), `max_seqlen`, `sequence_ids`, `num_sequences`, `indices`,
    `lengths` (residues after truncation) and `truncated`. With `as_numpy` the arrays stay
    numpy (see `create_async_dataloader`: a DataLoader worker sends them through its pipe far
    faster than tensors through shared memory).
    """
    full_lengths = np.fromiter((len(r) for r in residues), np.int64, len(residues))
    if max_length and (full_lengths > max_length).any():
        residues = [r[:max_length] for r in residues]
        lengths = np.minimum(full_lengths, max_length)
    else:
        lengths = full_lengths
    cu_seqlens = np.zeros(len(residues) + 1, dtype=np.int32)
    np.cumsum(lengths + 2, out=cu_seqlens[1:])
    starts, ends = cu_seqlens[:-1], cu_seqlens[1:] - 1
    is_residue = np.ones(int(cu_seqlens[-1]), dtype=bool)
    is_residue[starts] = False
    is_residue[ends] = False
    input_ids = np.empty(int(cu_seqlens[-1]), dtype=np.int64)
    input_ids[is_residue] = ESM1B_TOKENS[np.frombuffer(b"".join(residues), dtype=np.uint8)]
    input_ids[starts] = BOS_IDX
    input_ids[ends] = EOS_IDX
    batch = {
        "input_ids": input_ids,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(lengths.max()) + 2 if len(lengths) else 0,
        "sequence_ids": list(sequence_ids),
        "num_sequences": len(residues),
        "indices": np.array(indices, dtype=np.int64),
        "lengths": lengths.copy(),
        "truncated": full_lengths > lengths,
    }
    return batch if as_numpy else arrays_to_tensors(batch)


def arrays_to_tensors(batch: dict) -> dict:
    """The batch with its numpy arrays as tensors (zero-copy)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
