"""Built-in plugin: ``run``, ``resume``, ``inspect-checkpoint`` and ``plugins``.

The commands only validate what the person typed and hand it to the pipeline seam
(:mod:`virnucpro.cli.jobs`); they register through the same hook a third-party
plugin uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from virnucpro.cli.app import AppState, app_state
from virnucpro.cli.errors import MissingInputError
from virnucpro.cli.gpus import GpuSpec, parse_gpu_spec
from virnucpro.cli.hookspecs import hookimpl
from virnucpro.cli.jobs import JobContext, ProgressFactory
from virnucpro.cli.options import (
    CHUNK_SIZES,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MODEL,
    Device,
    InputType,
    Placement,
    Pooling,
    Precision,
    ResumeOptions,
    RunOptions,
    parse_layers,
    parse_token_budget,
)
from virnucpro.cli.report import print_report, report_json
from virnucpro.cli.signals import GracefulStop
from virnucpro.cli.summary import print_summary

T = TypeVar("T")
PLACEMENT = "Placement"
MODEL = "Model and output"
DATA = "Input"
CHECKPOINTS = "Checkpoints"


def _parsed(option: str, parse: Callable[[str], T], text: str) -> T:
    """Run a parser, turning its ValueError into a usage error on ``option``."""
    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _chunk_size(input_type: InputType, chunk_size: int | None) -> int:
    if chunk_size is None:
        return DEFAULT_CHUNK_SIZE
    if input_type is not InputType.dna:
        raise typer.BadParameter("only applies with --input-type dna", param_hint="--chunk-size")
    if chunk_size not in CHUNK_SIZES:
        raise typer.BadParameter(
            f"{chunk_size} is not one of {', '.join(map(str, CHUNK_SIZES))}",
            param_hint="--chunk-size",
        )
    return chunk_size


def _positive_seconds(seconds: float) -> float:
    if not seconds > 0:
        raise typer.BadParameter(f"{seconds} is not > 0", param_hint="--checkpoint-interval")
    return seconds


def _require_inputs(inputs: list[Path]) -> tuple[Path, ...]:
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise MissingInputError(f"input not found: {', '.join(missing)}")
    directories = [str(path) for path in inputs if path.is_dir()]
    if directories:
        raise MissingInputError(f"input is a directory, not a FASTA file: {', '.join(directories)}")
    return tuple(inputs)


def _require_run_dir(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise MissingInputError(f"run directory not found: {run_dir}")
    return run_dir


def _placement(device: Device, gpus: str, workers: int, processes: int = 1) -> Placement:
    spec: GpuSpec = _parsed("--gpus", parse_gpu_spec, gpus)
    if not spec.all and device is Device.cpu:
        raise typer.BadParameter("cannot select GPUs with --device cpu", param_hint="--gpus")
    return Placement(device=device, gpus=spec, workers=workers, processes=processes)


DeviceOption = Annotated[
    Device, typer.Option(help="Where to run; cuda fails if no GPU.", rich_help_panel=PLACEMENT)
]
GpusOption = Annotated[
    str,
    typer.Option(
        help="GPUs by physical id as nvidia-smi shows them: all, or e.g. 2,3.",
        rich_help_panel=PLACEMENT,
    ),
]
WorkersOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Data loader processes (0: none); one device or torchrun ranks only.",
        rich_help_panel=PLACEMENT,
    ),
]
ProcessesOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="CPU runs: worker processes sharing the cores, through the same queue as GPUs.",
        rich_help_panel=PLACEMENT,
    ),
]


def run(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path], typer.Argument(help="FASTA files (plain or gzip).", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Run directory (checkpoints, embeddings.h5).", show_default=False
        ),
    ],
    model: Annotated[
        str, typer.Option(help="fair-esm model name or path.", rich_help_panel=MODEL)
    ] = DEFAULT_MODEL,
    random_weights: Annotated[
        bool,
        typer.Option(help="Random weights (no download): tests and demos.", rich_help_panel=MODEL),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of random weights.", rich_help_panel=MODEL)] = 0,
    layers: Annotated[
        str,
        typer.Option(
            help="fair-esm layer numbers, comma-separated; negative counts from the last.",
            rich_help_panel=MODEL,
        ),
    ] = "last",
    pooling: Annotated[
        list[Pooling],
        typer.Option(help="Repeat for several; mean excludes BOS/EOS.", rich_help_panel=MODEL),
    ] = [Pooling.mean],  # noqa: B006 - Typer reads defaults; the list is never mutated
    precision: Annotated[
        Precision, typer.Option(help="auto: bf16 on GPUs that have it.", rich_help_panel=MODEL)
    ] = Precision.auto,
    input_type: Annotated[
        InputType,
        typer.Option(help="dna: six-frame translation of reads.", rich_help_panel=DATA),
    ] = InputType.protein,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            help=f"DNA reads mode: chunk length, 300 or 500 (default {DEFAULT_CHUNK_SIZE}).",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    max_length: Annotated[
        int,
        typer.Option(min=0, help="Truncate longer sequences (0: never).", rich_help_panel=DATA),
    ] = DEFAULT_MAX_LENGTH,
    token_budget: Annotated[
        str,
        typer.Option(
            help="Tokens per batch, or auto from free GPU memory.", rich_help_panel=PLACEMENT
        ),
    ] = "auto",
    device: DeviceOption = Device.auto,
    gpus: GpusOption = "all",
    workers: WorkersOption = 2,
    processes: ProcessesOption = 1,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            min=1, help="Checkpoint after this many sequences.", rich_help_panel=CHECKPOINTS
        ),
    ] = DEFAULT_CHECKPOINT_EVERY,
    checkpoint_interval: Annotated[
        float,
        typer.Option(help="Checkpoint after this many seconds.", rich_help_panel=CHECKPOINTS),
    ] = DEFAULT_CHECKPOINT_INTERVAL,
    force: Annotated[
        bool,
        typer.Option(help="Start over in a run directory that holds another run."),
    ] = False,
) -> None:
    """Embed the proteins of INPUTS into OUTPUT/embeddings.h5 (input order)."""
    state = app_state(ctx)
    options = RunOptions(
        inputs=_require_inputs(inputs),
        run_dir=output,
        model=model,
        random_weights=random_weights,
        seed=seed,
        input_type=input_type,
        chunk_size=_chunk_size(input_type, chunk_size),
        layers=_parsed("--layers", parse_layers, layers),
        pooling=tuple(dict.fromkeys(pooling)),
        precision=precision,
        token_budget=_parsed("--token-budget", parse_token_budget, token_budget),
        max_length=max_length,
        checkpoint_every=checkpoint_every,
        checkpoint_interval=_positive_seconds(checkpoint_interval),
        force=force,
        placement=_placement(device, gpus, workers, processes),
    )
    with GracefulStop() as stop:
        summary = state.jobs.run(options, _job_context(state, stop))
    if summary is not None:
        print_summary(state.console, summary)


def resume(
    ctx: typer.Context,
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="The run directory to continue.")
    ],
    device: DeviceOption = Device.auto,
    gpus: GpusOption = "all",
    workers: WorkersOption = 2,
    processes: ProcessesOption = 1,
) -> None:
    """Continue a stopped run from its manifest and checkpoints."""
    state = app_state(ctx)
    options = ResumeOptions(
        run_dir=_require_run_dir(run_dir),
        placement=_placement(device, gpus, workers, processes),
    )
    with GracefulStop() as stop:
        summary = state.jobs.resume(options, _job_context(state, stop))
    if summary is not None:
        print_summary(state.console, summary)


def inspect_checkpoint(
    ctx: typer.Context,
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="The run directory to inspect.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verify: Annotated[bool, typer.Option(help="Check every checkpoint's checksums.")] = False,
) -> None:
    """What is done, what is valid and what is left in a run directory."""
    state = app_state(ctx)
    report = state.jobs.inspect(_require_run_dir(run_dir), verify)
    if as_json:
        typer.echo(report_json(report))
    else:
        print_report(state.console, report)


def plugins(ctx: typer.Context) -> None:
    """The plugins found in the virnucpro entry-point group, and which loaded."""
    state = app_state(ctx)
    table = Table("plugin", "distribution", "version", "kind", "status")
    for info in state.plugins.plugins:
        table.add_row(
            info.name,
            info.distribution,
            info.version,
            "built-in" if info.builtin else "third-party",
            "loaded" if info.loaded else "blocked",
        )
    state.console.print(table)


def _job_context(state: AppState, stop: GracefulStop) -> JobContext:
    return JobContext(
        plugins=state.plugins,
        progress=ProgressFactory(state.err_console),
        stop=stop,
        console=state.console,
    )


@hookimpl
def virnucpro_register_commands(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("resume")(resume)
    app.command("inspect-checkpoint")(inspect_checkpoint)
    app.command("plugins")(plugins)
