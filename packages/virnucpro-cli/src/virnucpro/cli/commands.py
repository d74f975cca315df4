"""Built-in plugin: ``run``, ``resume``, ``inspect-checkpoint`` and ``plugins``.

A command turns what the person typed into the engine's configuration, calls the engine
(:mod:`virnucpro.infer.job.engine`, imported when a command runs, so ``--help`` and
``--version`` never load torch) and prints its result. The commands register through
the same hook a third-party plugin uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from virnucpro.cli.app import PlainHelpCommand, app_state
from virnucpro.cli.hookspecs import hookimpl
from virnucpro.cli.options import (
    Device,
    InputType,
    LongMode,
    Pooling,
    Precision,
    parse_layers,
    parse_token_budget,
)
from virnucpro.cli.report import inspect_report, print_report, report_json
from virnucpro.cli.reporter import CliReporter
from virnucpro.cli.signals import GracefulStop
from virnucpro.cli.summary import print_summary
from virnucpro.infer.job.config import CHUNK_SIZES, Placement, RunConfig, as_gpu_spec
from virnucpro.infer.job.errors import MissingInputError, RunStopped

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
        return RunConfig.chunk_size
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


def _placement(
    device: Device, gpus: str, workers: int, processes: int, stall_timeout: float
) -> Placement:
    if gpus.strip().lower() != "all" and device is Device.cpu:
        raise typer.BadParameter("cannot select GPUs with --device cpu", param_hint="--gpus")
    if not stall_timeout > 0:
        raise typer.BadParameter(f"{stall_timeout} is not > 0", param_hint="--stall-timeout")
    try:
        return Placement(
            device=device.value,
            gpus=as_gpu_spec(gpus),
            workers=workers,
            processes=processes,
            stall_timeout=stall_timeout,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("gpus: "), param_hint="--gpus") from None


DeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        metavar="[auto|cpu|cuda]",
        help="Where to run; cuda fails if no GPU.",
        rich_help_panel=PLACEMENT,
    ),
]
GpusOption = Annotated[
    str,
    typer.Option(
        "--gpus",
        metavar="IDS",
        help="GPUs by physical id as nvidia-smi shows them: all, or e.g. 2,3.",
        rich_help_panel=PLACEMENT,
    ),
]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        metavar="N",
        help="Data loader processes (0: pack in the main thread); one device or torchrun "
        "ranks only.",
        rich_help_panel=PLACEMENT,
    ),
]
StallOption = Annotated[
    float,
    typer.Option(
        "--stall-timeout",
        metavar="SECONDS",
        help="A worker or torchrun rank without progress this long is killed and its work "
        "re-queued (a torchrun job ends, naming the rank).",
        rich_help_panel=PLACEMENT,
    ),
]
ProcessesOption = Annotated[
    int,
    typer.Option(
        "--processes",
        min=1,
        metavar="N",
        help="CPU runs: worker processes sharing the cores, through the same queue as GPUs.",
        rich_help_panel=PLACEMENT,
    ),
]


def run(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path],
        typer.Argument(metavar="FASTA", help="FASTA files (plain or gzip).", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="RUN_DIR",
            help="Run directory (checkpoints, embeddings.h5).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="fair-esm name, .pt file, Hugging Face hub id or folder "
            f"(virnucpro models) [default: {RunConfig.model}].",
            show_default=False,
            rich_help_panel=MODEL,
        ),
    ] = RunConfig.model,
    random_weights: Annotated[
        bool,
        typer.Option(
            "--random-weights",
            help="Seeded random weights (no download): tests and demos.",
            rich_help_panel=MODEL,
        ),
    ] = RunConfig.random_weights,
    seed: Annotated[
        int,
        typer.Option("--seed", metavar="N", help="Seed of random weights.", rich_help_panel=MODEL),
    ] = RunConfig.seed,
    layers: Annotated[
        str,
        typer.Option(
            "--layers",
            metavar="LIST",
            help="fair-esm layers: numbers and ranges, comma-separated (33, -1,-2, 20-33, "
            "-4--1; negative counts from the last), all, or last.",
            rich_help_panel=MODEL,
        ),
    ] = "last",
    pooling: Annotated[
        list[Pooling],
        typer.Option(
            "--pooling",
            metavar="[mean|max|bos|per-token]",
            help="Repeat for several; mean excludes BOS/EOS [default: mean].",
            show_default=False,
            rich_help_panel=MODEL,
        ),
    ] = [Pooling.mean],  # noqa: B006 - Typer reads defaults; the list is never mutated
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            metavar="[auto|fp32|bf16|fp16]",
            help="auto: bf16 on GPUs that have it.",
            rich_help_panel=MODEL,
        ),
    ] = Precision.auto,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="NAME",
            help="A registered output writer (virnucpro plugins).",
            rich_help_panel=MODEL,
        ),
    ] = RunConfig.output_format,
    input_type: Annotated[
        InputType,
        typer.Option(
            "--input-type",
            metavar="[protein|dna]",
            help="dna: six-frame translation of reads.",
            rich_help_panel=DATA,
        ),
    ] = InputType.protein,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size",
            metavar="N",
            help=f"DNA reads mode: chunk length, 300 or 500 [default: {RunConfig.chunk_size}].",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse input with non-standard characters (digits, J, inner *, ...) "
            "before any work, instead of saying what they became.",
            rich_help_panel=DATA,
        ),
    ] = RunConfig.strict,
    max_length: Annotated[
        int,
        typer.Option(
            "--max-length",
            min=0,
            metavar="N",
            help="Residues per pass; longer sequences follow --long (0: no limit).",
            rich_help_panel=DATA,
        ),
    ] = RunConfig.max_length,
    long: Annotated[
        LongMode,
        typer.Option(
            "--long",
            metavar="[truncate|full|window]",
            help="Sequences over --max-length: truncate (as fair-esm), full (one pass; "
            "ESM-2 was trained to 1022), or window (overlapping windows, averaged).",
            rich_help_panel=DATA,
        ),
    ] = LongMode.truncate,
    window_overlap: Annotated[
        int,
        typer.Option(
            "--window-overlap",
            min=0,
            metavar="N",
            help="--long window: residues shared by consecutive windows.",
            rich_help_panel=DATA,
        ),
    ] = RunConfig.window_overlap,
    token_budget: Annotated[
        str,
        typer.Option(
            "--token-budget",
            metavar="N",
            help="Tokens per batch, or auto from free GPU memory.",
            rich_help_panel=PLACEMENT,
        ),
    ] = "auto",
    device: DeviceOption = Device.auto,
    gpus: GpusOption = "all",
    workers: WorkersOption = Placement.workers,
    processes: ProcessesOption = Placement.processes,
    stall_timeout: StallOption = Placement.stall_timeout,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            min=1,
            metavar="N",
            help="Checkpoint after this many sequences.",
            rich_help_panel=CHECKPOINTS,
        ),
    ] = RunConfig.checkpoint_every,
    checkpoint_interval: Annotated[
        float,
        typer.Option(
            "--checkpoint-interval",
            metavar="SECONDS",
            help="Checkpoint after this many seconds.",
            rich_help_panel=CHECKPOINTS,
        ),
    ] = RunConfig.checkpoint_interval,
    store_dtype: Annotated[
        str,
        typer.Option(
            "--store-dtype",
            metavar="[float32|float16]",
            help="dtype of every stored embedding; float16 halves the disk and memory.",
            rich_help_panel=MODEL,
        ),
    ] = RunConfig.store_dtype,
    compression: Annotated[
        str,
        typer.Option(
            "--compression",
            metavar="[none|lzf|gzip]",
            help="Compression of the embeddings in embeddings.h5 (the README gives sizes).",
            rich_help_panel=MODEL,
        ),
    ] = RunConfig.compression,
    keep_checkpoints: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoints",
            help="Keep the checkpoints after the output is written and verified.",
            rich_help_panel=CHECKPOINTS,
        ),
    ] = RunConfig.keep_checkpoints,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start over in a run directory that holds another run (moved beside it).",
        ),
    ] = False,
) -> None:
    """Embed the proteins of the FASTA files into RUN_DIR/embeddings.h5 (input order)."""
    state = app_state(ctx)
    config = RunConfig(
        inputs=_require_inputs(inputs),
        model=model,
        random_weights=random_weights,
        seed=seed,
        input_type=input_type.value,
        chunk_size=_chunk_size(input_type, chunk_size),
        strict=strict,
        layers=_parsed("--layers", parse_layers, layers),
        pooling=tuple(p.value for p in pooling),
        precision=precision.value,
        token_budget=_parsed("--token-budget", parse_token_budget, token_budget),
        max_length=max_length,
        long=long.value,
        window_overlap=window_overlap,
        checkpoint_every=checkpoint_every,
        checkpoint_interval=_positive_seconds(checkpoint_interval),
        store_dtype=store_dtype,
        compression=compression,
        output_format=output_format,
        keep_checkpoints=keep_checkpoints,
    )
    placement = _placement(device, gpus, workers, processes, stall_timeout)
    from virnucpro.infer.job.engine import run_job

    with GracefulStop() as stop:
        result = _stoppable(
            stop,
            lambda: run_job(
                config,
                output,
                placement,
                force=force,
                plugins=state.plugins.host,
                reporter=CliReporter(state.err_console),
                should_stop=lambda: stop.requested,
            ),
        )
    if result.lead:
        print_summary(state.console, result)


def resume(
    ctx: typer.Context,
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="The run directory to continue.")
    ],
    device: DeviceOption = Device.auto,
    gpus: GpusOption = "all",
    workers: WorkersOption = Placement.workers,
    processes: ProcessesOption = Placement.processes,
    stall_timeout: StallOption = Placement.stall_timeout,
) -> None:
    """Continue a stopped run from its manifest and checkpoints."""
    state = app_state(ctx)
    run_dir = _require_run_dir(run_dir)
    placement = _placement(device, gpus, workers, processes, stall_timeout)
    from virnucpro.infer.job.engine import resume_job

    with GracefulStop() as stop:
        result = _stoppable(
            stop,
            lambda: resume_job(
                run_dir,
                placement,
                plugins=state.plugins.host,
                reporter=CliReporter(state.err_console),
                should_stop=lambda: stop.requested,
            ),
        )
    if result.lead:
        print_summary(state.console, result)


def _stoppable(stop: GracefulStop, call: Callable[[], T]) -> T:
    """The engine's stop, said with the signal that asked for it."""
    try:
        return call()
    except RunStopped as stopped:
        raise stop.stopped_error(Path(str(stopped.run_dir))) from None


def inspect_checkpoint(
    ctx: typer.Context,
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="The run directory to inspect.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every checkpoint's checksums.")
    ] = False,
) -> None:
    """What is done, what is valid and what is left in a run directory."""
    state = app_state(ctx)
    report = inspect_report(_require_run_dir(run_dir), verify)
    if as_json:
        typer.echo(report_json(report))
    else:
        print_report(state.console, report)


def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """The ESM-2 sizes, which are cached here (fair-esm and Hugging Face caches), and
    which fit on the visible GPUs."""
    state = app_state(ctx)
    from virnucpro.infer.catalog import model_catalog, visible_gpus

    entries = model_catalog()
    if as_json:
        typer.echo(json.dumps([asdict(entry) for entry in entries]))
        return
    table = Table("model", "layers", "width", "params", "bf16", "cached", "fits on")
    gpus = visible_gpus()
    for entry in entries:
        table.add_row(
            entry.name,
            str(entry.num_layers),
            str(entry.embed_dim),
            f"{entry.num_parameters / 1e6:,.0f}M",
            f"{entry.bf16_bytes / 2**30:.1f} GiB",
            str(len(entry.cached)) if entry.cached else "-",
            ", ".join(entry.fits) or "none" if gpus else "no GPU",
        )
    state.console.print(table)
    for entry in entries:
        for path in entry.cached:
            state.console.print(f"{entry.name}: {path}", markup=False, highlight=False)
    state.console.print(
        "A model is named as above, as a Hugging Face hub id (facebook/<name>), as a folder "
        "with config.json, or as a fair-esm .pt file.",
        markup=False,
        highlight=False,
    )


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


@hookimpl
def virnucpro_register_commands(app: typer.Typer) -> None:
    app.command("run", cls=PlainHelpCommand)(run)
    app.command("resume", cls=PlainHelpCommand)(resume)
    app.command("inspect-checkpoint", cls=PlainHelpCommand)(inspect_checkpoint)
    app.command("models", cls=PlainHelpCommand)(models)
    app.command("plugins", cls=PlainHelpCommand)(plugins)
