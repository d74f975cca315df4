"""The short summary printed when a run finishes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from virnucpro.cli.progress import format_duration


@dataclass(frozen=True)
class RunSummary:
    """What a finished ``run`` or ``resume`` reports; speed counts this session only."""

    sequences: int
    """Sequences in the output."""
    new_sequences: int
    """Sequences embedded by this session (fewer than ``sequences`` after a resume)."""
    tokens: int
    """Tokens processed by this session."""
    seconds: float
    """Wall time of this session."""
    output: Path
    already_complete: bool = False
    """``resume`` found nothing left to do."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def summary_lines(summary: RunSummary) -> list[str]:
    if summary.already_complete:
        return [f"already complete: {summary.sequences:,} sequences in {summary.output}"]
    resumed = summary.sequences - summary.new_sequences
    done = f"{summary.sequences:,} sequences"
    if resumed:
        done += f" ({summary.new_sequences:,} now, {resumed:,} before resuming)"
    return [
        f"done: {done}",
        f"tokens: {summary.tokens:,} in {format_duration(summary.seconds)}"
        f" ({summary.tokens_per_s:,.0f} tokens/s)",
        f"output: {summary.output}",
    ]


def print_summary(console: Console, summary: RunSummary) -> None:
    for line in summary_lines(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
