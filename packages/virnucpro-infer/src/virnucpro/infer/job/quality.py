"""What a run says about its input besides the embeddings: sequences over the length
limit (truncated, windowed or whole), characters that are not standard amino acids
and what they became, DNA chunks that gave no protein. Counted once from the index at
set-up, recorded in the manifest (so ``inspect-checkpoint`` and the output's attributes
carry them) and said in the run's summary. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FIRST_IDS = 5


def quality_counts(index: Any, max_length: int, long: str) -> dict[str, Any]:
    """Counts from a :class:`virnucpro.data.SequenceIndex` (first few ids of each)."""
    over = np.flatnonzero(index.lengths > max_length) if max_length else np.zeros(0, np.int64)
    odd = index.nonstandard_summary(FIRST_IDS)
    return {
        "over_max_length": len(over),
        "over_max_length_ids": index.ids_of(over[:FIRST_IDS]),
        "long": long,
        "max_length": max_length,
        "nonstandard_sequences": odd.sequences,
        "nonstandard_line": odd.line(),
        "chunks_without_protein": int(index.chunks_without_protein),
    }


def quality_lines(quality: Mapping[str, Any]) -> list[str]:
    """The summary's lines for ``quality_counts``; none when there is nothing to say."""
    lines = []
    over = int(quality.get("over_max_length", 0))
    if over:
        ids = ", ".join(quality["over_max_length_ids"]) + (", ..." if over > FIRST_IDS else "")
        fate = {
            "truncate": f"truncated to {quality['max_length']:,} residues",
            "window": f"embedded in overlapping windows of {quality['max_length']:,} residues",
            "full": "embedded whole, past the length ESM-2 was trained on",
        }[quality["long"]]
        limit = quality["max_length"]
        lines.append(f"{over:,} sequences longer than {limit:,} residues {fate} ({ids})")
    if quality.get("nonstandard_line"):
        lines.append(quality["nonstandard_line"])
    if quality.get("chunks_without_protein"):
        lines.append(
            f"{quality['chunks_without_protein']:,} DNA chunks gave no protein "
            "(every frame held a stop codon)"
        )
    return lines
