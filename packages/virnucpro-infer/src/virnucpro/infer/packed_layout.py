"""Per-batch facts about a packed token stream, computed once per batch on the device.

Everything here is derived from `cu_seqlens` with tensor ops whose output sizes are
known from shapes, so building a layout on a GPU never waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedLayout:
    cu_seqlens: torch.Tensor  # int32, (B + 1,)
    max_seqlen: int
    lengths: torch.Tensor  # int64, (B,): tokens per sequence, BOS and EOS included
    sequence_index: torch.Tensor  # int64, (T,): which sequence each token belongs to
    positions: torch.Tensor  # int64, (T,): position in its own sequence, 0 at BOS

    @property
    def num_sequences(self) -> int:
        return self.lengths.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.sequence_index.shape[0]


def build_layout(cu_seqlens: torch.Tensor, max_seqlen: int, num_tokens: int) -> PackedLayout:
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            "cu_seqlens must be a 1-D int32 tensor of num_sequences + 1 offsets starting at 0"
        )
    offsets = cu_seqlens.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    sequence_index = torch.repeat_interleave(
        torch.arange(lengths.shape[0], device=cu_seqlens.device), lengths, output_size=num_tokens
    )
    positions = torch.arange(num_tokens, device=cu_seqlens.device) - offsets[sequence_index]
    return PackedLayout(cu_seqlens, int(max_seqlen), lengths, sequence_index, positions)
