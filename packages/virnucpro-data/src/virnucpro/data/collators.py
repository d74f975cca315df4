"""VarlenCollator: a list of sequence dicts to one packed batch, stateless.

It keeps nothing between calls (no buffer to lose in worker copies) and never drops a
sequence: when the items need more than `max_tokens` it raises a ValueError instead of
silently cutting the batch. A single sequence over `max_tokens` is packed alone, as the
planner does. To pack by tokens rather than by item count, use `plan_batches` with
`PackedBatchDataset`.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from virnucpro.data.packed_batch import pack_residues
from virnucpro.data.tokenizer import PAD_IDX


class VarlenCollator:
    """Collate `{'id', 'sequence'[, 'index', 'truncated']}` dicts into a packed batch.

    Tokenizes with the project's own ESM-1b table; a fair-esm `batch_converter` may be given
    instead (fair-esm raises KeyError on characters outside its alphabet; the table gives
    `<unk>`). `index` is -1 for items that carry none. Residues beyond `max_length` are cut
    (0 = no cut) and marked `truncated`.
    """

    def __init__(
        self,
        batch_converter: Callable | None = None,
        max_tokens: int = 4096,
        max_length: int = 1022,
    ) -> None:
        self.batch_converter = batch_converter
        self.max_tokens = max_tokens
        self.max_length = max_length

    def __call__(self, batch: Sequence[dict]) -> dict:
        sequences = [item["sequence"] for item in batch]
        cut = [s[: self.max_length or None] for s in sequences]
        tokens = sum(len(s) + 2 for s in cut)
        if len(batch) > 1 and tokens > self.max_tokens:
            raise ValueError(
                f"VarlenCollator: {len(batch)} sequences need {tokens} tokens, more than "
                f"max_tokens={self.max_tokens}, and no sequence is ever dropped; lower "
                "batch_size, raise max_tokens, or pack by tokens with plan_batches and "
                "PackedBatchDataset"
            )
        ids = [item["id"] for item in batch]
        indices = [item.get("index", -1) for item in batch]
        if self.batch_converter is None:
            packed = pack_residues(
                [s.encode("utf-8", "surrogateescape") for s in cut], ids, indices, 0
            )
        else:
            packed = self._pack_with_converter(self.batch_converter, ids, cut, indices)
        was_cut = torch.tensor(
            [
                bool(item.get("truncated", False)) or len(s) > self.max_length > 0
                for item, s in zip(batch, sequences, strict=True)
            ],
            dtype=torch.bool,
        )
        packed["truncated"] = was_cut
        return packed

    @staticmethod
    def _pack_with_converter(
        batch_converter: Callable, ids: list[str], sequences: list[str], indices: list[int]
    ) -> dict:
        _, _, padded = batch_converter(list(zip(ids, sequences, strict=True)))
        rows = []
        for row in padded:
            real = torch.nonzero(row != PAD_IDX).max().item() + 1
            rows.append(row[:real].to(torch.int64))
        lengths = torch.tensor([len(r) - 2 for r in rows], dtype=torch.int64)
        cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int32)
        cu_seqlens[1:] = torch.cumsum(lengths + 2, 0)
        return {
            "input_ids": torch.cat(rows),
            "cu_seqlens": cu_seqlens,
            "max_seqlen": int(lengths.max()) + 2,
            "sequence_ids": list(ids),
            "num_sequences": len(rows),
            "indices": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
            "lengths": lengths,
        }
