"""The seam between the command line and the pipeline (data, infer, ckpt).

Commands validate what the person typed and call these functions; nothing else in the
cli knows the pipeline. Each function raises :mod:`virnucpro.cli.errors` types for
failures a person can act on.

``run`` and ``resume`` share one path once the configuration is known: under the run
lock, resume what valid checkpoints hold (damaged files quarantined), plan only the rest,
embed it with :func:`virnucpro.infer.embed_rank` while the bars count from what was
already done, then merge through the output writer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from virnucpro.ckpt import (
    CheckpointError,
    ResumeResult,
    RunLock,
    inspect_run,
    read_manifest,
    resume_from_checkpoints,
    write_manifest,
)
from virnucpro.ckpt import merge_checkpoints as merge_run
from virnucpro.cli.distributed import Coordinator, World, rank_target, torchrun_world
from virnucpro.cli.errors import (
    InputsChangedError,
    MissingInputError,
    RunDirMismatchError,
    UsageError,
)
from virnucpro.cli.failures import pipeline_errors
from virnucpro.cli.multi_device import embed_on_devices
from virnucpro.cli.options import Placement, ResumeOptions, RunOptions, resolve_layers
from virnucpro.cli.plugins import PluginHost
from virnucpro.cli.progress import ProgressDisplay, create_progress
from virnucpro.cli.report import CheckpointInfo, RunReport, RunState
from virnucpro.cli.run_manifest import build_manifest, describe_input_change, model_spec
from virnucpro.cli.rundir import move_old_run_aside, used_entries
from virnucpro.cli.settings import (
    DTYPES,
    Target,
    resolve_precision,
    resolve_targets,
    resolve_token_budget,
)
from virnucpro.cli.signals import GracefulStop
from virnucpro.cli.summary import RunSummary
from virnucpro.data import SequenceIndex, build_index, plan_batches, split_for_rank
from virnucpro.infer import (
    STOPPED,
    CheckpointPolicy,
    ESM2Backend,
    LoadedModel,
    ModelRegistry,
    embed_rank,
)

SPOOL_DIR = "spool"
OUTPUT_WRITER = "hdf5"


class ProgressFactory:
    """Makes the display once the pipeline knows the total and what is already done."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, total: int, completed: int = 0) -> ProgressDisplay:
        return create_progress(self.console, total, completed)


@dataclass(frozen=True)
class JobContext:
    """What a job gets from the command line besides its options."""

    plugins: PluginHost
    """Fill infer's model registry with ``plugins.register_models(registry)``; writers
    come from ``plugins.writers()``."""
    progress: ProgressFactory
    stop: GracefulStop
    """Check ``stop.requested`` at batch boundaries; once stopped and checkpointed,
    ``raise stop.stopped_error(run_dir)``."""
    console: Console


@dataclass
class _Prepared:
    """A run ready to embed: its manifest written, its model loaded on the first target."""

    run_dir: Path
    manifest: dict[str, Any]
    index: SequenceIndex
    loaded: LoadedModel | None
    backend: Any
    targets: list[Target]
    workers: int

    @property
    def target(self) -> Target:
        return self.targets[0]


class Jobs:
    """The pipeline behind ``run``, ``resume`` and ``inspect-checkpoint``.

    One process on one device, one process per device through the queue manager
    (several GPUs, or ``--processes`` on the CPU), or one rank of many under torchrun
    (``None`` is returned on every rank but 0, which prints the summary).
    """

    def run(self, options: RunOptions, context: JobContext) -> RunSummary | None:
        """Embed ``options.inputs`` into ``options.run_dir``; write the outputs."""
        started = time.perf_counter()
        run_dir = options.run_dir.resolve()
        world = torchrun_world()
        if world is not None:
            return _ranked(
                world,
                options.placement,
                run_dir,
                context,
                started,
                lambda target: _set_up_run(options, context, run_dir, [target]),
            )
        with pipeline_errors(), RunLock(run_dir):
            targets = resolve_targets(
                options.placement.device, options.placement.gpus, options.placement.processes
            )
            prepared, done = _set_up_run(options, context, run_dir, targets)
            return _embed_and_merge(prepared, done, context, started)

    def resume(self, options: ResumeOptions, context: JobContext) -> RunSummary | None:
        """Continue the run in ``options.run_dir`` (``already_complete`` if nothing was left)."""
        started = time.perf_counter()
        run_dir = options.run_dir.resolve()
        world = torchrun_world()
        if world is not None:
            return _ranked(
                world,
                options.placement,
                run_dir,
                context,
                started,
                lambda target: _set_up_resume(run_dir, options.placement, context, [target]),
            )
        with pipeline_errors(), RunLock(run_dir):
            prepared, done = _set_up_resume(run_dir, options.placement, context, None)
            if prepared is None:
                return _finish_complete_run(run_dir, read_manifest(run_dir), context, started)
            return _embed_and_merge(prepared, done, context, started)

    def inspect(self, run_dir: Path, verify: bool) -> RunReport:
        """The state of ``run_dir``; ``verify`` checks every checksum."""
        with pipeline_errors():
            _read_run_manifest(run_dir)
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
        )

    def write_hdf5(self, run_dir: Path) -> Path:
        """Merge the checkpoints of the finished run into ``run_dir/embeddings.h5``."""
        with pipeline_errors():
            return merge_run(run_dir)

    def esm2_backend(self) -> object:
        """The ESM-2 (fair-esm) backend for infer's ``ModelRegistry.register``."""
        return ESM2Backend()


def _set_up_run(
    options: RunOptions, context: JobContext, run_dir: Path, targets: list[Target]
) -> tuple[_Prepared, ResumeResult]:
    """Under the run lock: claim the directory, index, load, write the manifest, and
    find what valid checkpoints already hold (damaged files quarantined)."""
    _claim_run_dir(run_dir, options.force, context.console)
    index = build_index(
        options.inputs, options.input_type.value, options.chunk_size, run_dir / SPOOL_DIR
    )
    _check_stop(context, run_dir)
    device = targets[0].device
    precision = resolve_precision(options.precision, device)
    loaded, backend = _load(
        context, options.model, options.random_weights, options.seed, device, precision
    )
    layers = _layers(options.layers, loaded.num_layers)
    budget = resolve_token_budget(
        options.token_budget, device, loaded.embed_dim, len(layers), precision, options.max_length
    )
    manifest = build_manifest(
        index=index,
        model_name=model_spec(options.model),
        loaded=loaded,
        layers=layers,
        pooling=[p.value for p in options.pooling],
        precision=precision,
        token_budget=budget,
        token_budget_auto=options.token_budget is None,
        max_length=options.max_length,
        checkpoint_every=options.checkpoint_every,
        checkpoint_interval=options.checkpoint_interval,
    )
    write_manifest(run_dir, manifest)
    done = resume_from_checkpoints(run_dir, manifest, quarantine=True)
    prepared = _Prepared(
        run_dir, manifest, index, loaded, backend, targets, options.placement.workers
    )
    return prepared, done


def _set_up_resume(
    run_dir: Path, placement: Placement, context: JobContext, targets: list[Target] | None
) -> tuple[_Prepared | None, ResumeResult]:
    """Under the run lock: the stored run, what is done, and (unless nothing is left)
    the model on the first target (``None``: from ``placement``)."""
    stored = _read_run_manifest(run_dir)
    index = _rebuild_index(run_dir, stored)
    done = resume_from_checkpoints(run_dir, stored, quarantine=True)
    if done.num_left == 0:
        return None, done
    _check_stop(context, run_dir)
    if targets is None:
        targets = resolve_targets(placement.device, placement.gpus, placement.processes)
    return _prepare_resume(run_dir, stored, index, placement, context, targets), done


def _claim_run_dir(run_dir: Path, force: bool, console: Console) -> None:
    """Refuse a used run directory unless ``force``; then move the old run aside."""
    used = used_entries(run_dir)
    if not used:
        return
    if not force:
        raise RunDirMismatchError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in used)}): "
            f"continue it with `virnucpro resume {run_dir}` or start over with --force"
        )
    moved = move_old_run_aside(run_dir)
    console.print(f"--force: the previous run was moved to {moved}", markup=False, highlight=False)


def _read_run_manifest(run_dir: Path) -> dict[str, Any]:
    try:
        return read_manifest(run_dir)
    except CheckpointError as exc:
        raise MissingInputError(str(exc)) from None


def _rebuild_index(run_dir: Path, stored: dict[str, Any]) -> SequenceIndex:
    """The index of the run's own inputs; refuse inputs that changed, saying how."""
    missing = [path for path in stored["inputs"] if not Path(path).is_file()]
    if missing:
        raise MissingInputError(
            f"input of the run not found: {', '.join(missing)}; restore it to resume"
        )
    index = build_index(
        stored["inputs"], stored["input_type"], stored["chunk_size"], run_dir / SPOOL_DIR
    )
    change = describe_input_change(stored, index)
    if change is not None:
        raise InputsChangedError(change)
    return index


def _prepare_resume(
    run_dir: Path,
    stored: dict[str, Any],
    index: SequenceIndex,
    placement: Placement,
    context: JobContext,
    targets: list[Target],
) -> _Prepared:
    device = targets[0].device
    precision = stored["precision"]
    loaded, backend = _load(
        context, stored["model"], stored["random_weights"], stored["seed"] or 0, device, precision
    )
    if loaded.checksum != stored["model_checksum"]:
        raise RunDirMismatchError(
            f"the weights of {stored['model']} changed since the run started "
            f"(sha256 {stored['model_checksum']} -> {loaded.checksum}); "
            "restore them, or start over with `virnucpro run ... --force`"
        )
    manifest = dict(stored)
    if stored.get("token_budget_auto"):
        manifest["token_budget"] = resolve_token_budget(
            None,
            device,
            loaded.embed_dim,
            len(stored["layers"]),
            precision,
            stored["max_length"],
        )
    return _Prepared(run_dir, manifest, index, loaded, backend, targets, placement.workers)


def _load(
    context: JobContext,
    spec: str,
    random_weights: bool,
    seed: int,
    device: torch.device,
    precision: str,
) -> tuple[LoadedModel, Any]:
    """The model through the registry every plugin filled, in the run's precision."""
    registry = ModelRegistry()
    context.plugins.register_models(registry)
    backend = registry.resolve(spec)
    loaded = backend.load(
        spec,
        random_weights=random_weights,
        seed=seed,
        device=device,
        dtype=DTYPES[precision],
    )
    return loaded, backend


def _layers(requested: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
    try:
        return resolve_layers(requested, num_layers)
    except ValueError as exc:
        raise UsageError(f"--layers: {exc}") from None


def _check_stop(context: JobContext, run_dir: Path) -> None:
    if context.stop.requested:
        raise context.stop.stopped_error(run_dir)


def _embed_and_merge(
    prepared: _Prepared, done: ResumeResult, context: JobContext, started: float
) -> RunSummary:
    """Embed what ``done`` lacks on one device or, through the queue, on several; merge."""
    run_dir, manifest = prepared.run_dir, prepared.manifest
    batches = _plan(prepared.index, manifest, done.done_indices)
    total = int(manifest["num_sequences"])
    with context.progress(total, done.num_done) as progress:
        if len(prepared.targets) == 1:
            progress.add_worker(prepared.target.label, total, done.num_done)
            stopped, sequences, tokens = _embed_here(prepared, batches, progress, context)
        else:
            for slot, target in enumerate(prepared.targets):
                progress.add_worker(target.label, None, _rows_of_rank(done, slot))
            _release_model(prepared)
            outcome = embed_on_devices(
                run_dir,
                manifest,
                prepared.index,
                batches,
                prepared.targets,
                progress,
                context.stop,
                lambda line: context.progress.console.print(line, markup=False, highlight=False),
            )
            stopped, sequences, tokens = outcome.stopped, outcome.sequences, outcome.tokens
    if stopped:
        raise context.stop.stopped_error(run_dir)
    if len(prepared.targets) > 1:
        # Killed workers may have left temporary files; merge takes finished files only.
        resume_from_checkpoints(run_dir, manifest, quarantine=True)
    output = _write_output(run_dir, context)
    return RunSummary(
        sequences=total,
        new_sequences=sequences,
        tokens=tokens,
        seconds=time.perf_counter() - started,
        output=output,
    )


def _plan(index: SequenceIndex, manifest: dict[str, Any], done: np.ndarray) -> list[np.ndarray]:
    """What is left, packed; deterministic, so every rank computes the same plan."""
    return plan_batches(
        index.lengths, int(manifest["token_budget"]), int(manifest["max_length"]), exclude=done
    )


def _embed_here(
    prepared: _Prepared,
    batches: list[np.ndarray],
    progress: ProgressDisplay,
    context: JobContext,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[bool, int, int]:
    """``batches`` on this process's device as rank ``rank``: (stopped, sequences, tokens)."""
    manifest, key = prepared.manifest, prepared.target.label
    outcome = embed_rank(
        prepared.run_dir,
        manifest,
        prepared.index,
        batches,
        # Compiled on CUDA: 1.7x the eager speed on H100 (benchmarks/results).
        prepared.backend.packed_forward(
            prepared.loaded, compile=prepared.target.device.type == "cuda"
        ),
        prepared.target.device,
        rank=rank,
        world_size=world_size,
        policy=CheckpointPolicy(
            int(manifest["checkpoint_every"]), float(manifest["checkpoint_interval"])
        ),
        num_workers=prepared.workers,
        on_batch=lambda sequences, tokens: progress.advance(key, sequences, tokens),
        should_stop=lambda: context.stop.requested,
    )
    return outcome.status == STOPPED, outcome.sequences, outcome.tokens


def _rows_of_rank(done: ResumeResult, rank: int) -> int:
    """Rows the valid checkpoints of ``rank`` hold: where its bar starts after resume."""
    return sum(info.num_sequences for info in done.checkpoints if info.rank == rank)


def _release_model(prepared: _Prepared) -> None:
    """The parent only needed the model for the manifest; the workers load their own."""
    prepared.loaded = None
    if prepared.target.device.type == "cuda":
        torch.cuda.empty_cache()


def _ranked(
    world: World,
    placement: Placement,
    run_dir: Path,
    context: JobContext,
    started: float,
    set_up: Callable[[Target], tuple[_Prepared | None, ResumeResult]],
) -> RunSummary | None:
    """One rank of a torchrun launch: rank 0 sets up under the run lock and shares the
    manifest and done set; every rank embeds its share of the same plan; after one
    all-reduce (which also waits for every rank) rank 0 merges and reports."""
    with pipeline_errors():
        target = rank_target(placement, world)
    with pipeline_errors(), Coordinator(world) as ranks, contextlib.ExitStack() as held:
        own: list[_Prepared | None] = [None]

        def lead_set_up() -> tuple[dict[str, Any] | None, np.ndarray]:
            held.enter_context(RunLock(run_dir))
            own[0], done = set_up(target)
            return (own[0].manifest if own[0] else None), done.done_indices

        manifest, done_indices = ranks.share(lead_set_up if world.lead else None)
        if manifest is None:
            if not world.lead:
                return None
            return _finish_complete_run(run_dir, read_manifest(run_dir), context, started)
        prepared = own[0] or _join_run(run_dir, manifest, target, placement.workers, context)
        batches = split_for_rank(
            _plan(prepared.index, manifest, done_indices),
            world.rank,
            world.size,
            prepared.index.lengths,
            int(manifest["max_length"]),
        )
        total = int(manifest["num_sequences"])
        display = (
            context.progress(total, len(done_indices))
            if world.lead
            else ProgressDisplay(total, len(done_indices))
        )
        with display as progress:
            progress.add_worker(target.label, None, 0)
            stopped, sequences, tokens = _embed_here(
                prepared, batches, progress, context, world.rank, world.size
            )
        stopped_ranks, sequences, tokens = ranks.sum(int(stopped), sequences, tokens)
        if stopped_ranks:
            raise context.stop.stopped_error(run_dir)
        if not world.lead:
            return None
        output = _write_output(run_dir, context)
        return RunSummary(
            sequences=total,
            new_sequences=sequences,
            tokens=tokens,
            seconds=time.perf_counter() - started,
            output=output,
        )


def _join_run(
    run_dir: Path, manifest: dict[str, Any], target: Target, workers: int, context: JobContext
) -> _Prepared:
    """A rank other than 0: the same inputs (checked by fingerprint) and the same weights
    (checked by checksum) on its own device. Gzip inputs are spooled to a temporary
    folder of its own, as rank 0 owns the run directory's spool."""
    index = build_index(manifest["inputs"], manifest["input_type"], manifest["chunk_size"])
    change = describe_input_change(manifest, index)
    if change is not None:
        raise InputsChangedError(f"this rank sees other inputs than rank 0: {change}")
    loaded, backend = _load(
        context,
        manifest["model"],
        manifest["random_weights"],
        manifest["seed"] or 0,
        target.device,
        manifest["precision"],
    )
    if loaded.checksum != manifest["model_checksum"]:
        raise RunDirMismatchError(
            f"the weights of {manifest['model']} on this node differ from rank 0's "
            f"(sha256 {loaded.checksum} vs {manifest['model_checksum']})"
        )
    return _Prepared(run_dir, manifest, index, loaded, backend, [target], workers)


def _finish_complete_run(
    run_dir: Path, stored: dict[str, Any], context: JobContext, started: float
) -> RunSummary:
    """Nothing left to embed: merge if that has not happened yet."""
    output = run_dir / "embeddings.h5"
    merged_before = output.is_file() and _merged_is_current(run_dir)
    if not merged_before:
        output = _write_output(run_dir, context)
    return RunSummary(
        sequences=int(stored["num_sequences"]),
        new_sequences=0,
        tokens=0,
        seconds=time.perf_counter() - started,
        output=output,
        already_complete=True,
    )


def _merged_is_current(run_dir: Path) -> bool:
    """The merged file is newer than every checkpoint."""
    merged = (run_dir / "embeddings.h5").stat().st_mtime
    stamps = [p.stat().st_mtime for p in (run_dir / "checkpoints").glob("rank_*/*.h5")]
    return not stamps or merged >= np.max(stamps)


def _write_output(run_dir: Path, context: JobContext) -> Path:
    return context.plugins.writers().get(OUTPUT_WRITER).write(run_dir)


PIPELINE = Jobs()
