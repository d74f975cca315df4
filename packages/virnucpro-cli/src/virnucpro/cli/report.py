"""``inspect-checkpoint``: the state of a run directory, as a table or as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from rich.console import Console
from rich.table import Table

from virnucpro.ckpt import CheckpointError, inspect_run, read_manifest
from virnucpro.infer.job.errors import MissingInputError
from virnucpro.infer.job.quality import quality_lines


class RunState(str, Enum):
    running = "running"
    interrupted = "interrupted"
    complete = "complete"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    rank: int
    sequences: int
    valid: bool
    trigger: str | None = None
    """Why it was written: sequence count, elapsed time, final, stop signal."""
    gpu_memory_bytes: int | None = None
    problem: str | None = None
    """Why it is not valid, if it is not."""


@dataclass(frozen=True)
class RunReport:
    run_dir: Path
    state: RunState
    total_sequences: int
    completed_sequences: int
    checkpoints: tuple[CheckpointInfo, ...]
    verified: bool
    """True when every checksum was checked (``--verify``)."""
    notes: tuple[str, ...] = ()
    """What the run says about its input (``virnucpro.infer.job.quality``)."""
    output: str | None = None
    """The output's path when it is written; ``output_problem`` says what is damaged."""
    output_problem: str | None = None


def inspect_report(run_dir: Path, verify: bool) -> RunReport:
    """The state of ``run_dir``; ``verify`` checks every checksum."""
    try:
        manifest = read_manifest(run_dir)
    except CheckpointError as exc:
        raise MissingInputError(str(exc)) from None
    found = inspect_run(run_dir, verify=verify)
    return RunReport(
        run_dir=Path(found["run_dir"]),
        state=RunState(found["state"]),
        total_sequences=found["total_sequences"],
        completed_sequences=found["completed_sequences"],
        checkpoints=tuple(
            CheckpointInfo(
                path=Path(entry["path"]),
                rank=entry["rank"] if entry["rank"] is not None else -1,
                sequences=entry["sequences"],
                valid=entry["valid"],
                trigger=entry["trigger_reason"],
                gpu_memory_bytes=entry["gpu_memory_peak_bytes"] or None,
                problem=entry["problem"],
            )
            for entry in found["checkpoints"]
        ),
        verified=found["verified"],
        notes=tuple(quality_lines(manifest.get("quality", {}))),
        output=found["output"]["path"] if found["output"]["present"] else None,
        output_problem=found["output"]["problem"],
    )


def report_json(report: RunReport) -> str:
    """One JSON object; paths as strings, state as its name."""
    data = asdict(report)
    data["run_dir"] = str(report.run_dir)
    data["state"] = report.state.value
    data["checkpoints"] = [
        {**asdict(checkpoint), "path": str(checkpoint.path)} for checkpoint in report.checkpoints
    ]
    return json.dumps(data, sort_keys=True)


def _memory(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def print_report(console: Console, report: RunReport) -> None:
    """A header line and one table row per checkpoint, grouped by rank."""
    share = (
        f" ({100.0 * report.completed_sequences / report.total_sequences:.1f}%)"
        if report.total_sequences
        else ""
    )
    console.print(
        f"{report.run_dir}: {report.state.value}, "
        f"{report.completed_sequences:,}/{report.total_sequences:,} sequences{share}"
        + ("" if report.verified else " (checksums not verified; use --verify)"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    table = Table("rank", "checkpoint", "sequences", "valid", "trigger", "GPU memory")
    for checkpoint in sorted(report.checkpoints, key=lambda c: (c.rank, str(c.path))):
        valid = "yes" if checkpoint.valid else f"NO: {checkpoint.problem or 'invalid'}"
        table.add_row(
            str(checkpoint.rank),
            checkpoint.path.name,
            f"{checkpoint.sequences:,}",
            valid,
            checkpoint.trigger or "-",
            _memory(checkpoint.gpu_memory_bytes),
        )
    console.print(table)
    if report.output is not None:
        state = f"DAMAGED: {report.output_problem}" if report.output_problem else "written"
        checked = "" if report.verified else " (not read back; use --verify)"
        console.print(
            f"output: {report.output}: {state}{checked}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for line in report.notes:
        console.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)
