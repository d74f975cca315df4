"""The short summary printed when a run finishes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from virnucpro.cli.progress import format_duration

if TYPE_CHECKING:
    from virnucpro.infer.job.engine import JobResult


def summary_lines(summary: JobResult) -> list[str]:
    notes = [f"note: {line}" for line in summary.notes]
    if summary.already_complete:
        return [
            f"already complete: {summary.sequences:,} sequences in {summary.output} "
            "(to compute it again: virnucpro run ... --force)",
            *notes,
        ]
    resumed = summary.sequences - summary.new_sequences
    done = f"{summary.sequences:,} sequences"
    if resumed:
        done += f" ({summary.new_sequences:,} now, {resumed:,} before resuming)"
    return [
        f"done: {done}",
        f"tokens: {summary.tokens:,} in {format_duration(summary.seconds)}"
        f" ({summary.tokens_per_s:,.0f} tokens/s)",
        f"output: {summary.output}",
        *notes,
    ]


def print_summary(console: Console, summary: JobResult) -> None:
    for line in summary_lines(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
