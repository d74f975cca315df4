"""Setting a session up, in the one process that holds the run lock (the lead).

``run`` claims the directory, indexes the inputs, describes the model (its checksum is
read here, once), resolves ``auto`` and writes the manifest; ``resume`` reads the
manifest back and checks that inputs and weights did not change. Both then find what
valid checkpoints hold (damaged files are quarantined, and each is said). What every
other process needs travels as a :class:`Shared`: small and picklable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.ckpt import (
    CheckpointError,
    ManifestMismatchError,
    check_run_space,
    read_manifest,
    restore_checkpoints,
    resume_from_checkpoints,
    write_manifest,
)
from virnucpro.data import SequenceIndex, build_index
from virnucpro.infer.catalog import check_fits
from virnucpro.infer.job.config import RunConfig, resolve_layers
from virnucpro.infer.job.devices import (
    DTYPES,
    Target,
    resolve_precision,
    resolve_token_budget,
)
from virnucpro.infer.job.errors import (
    ConfigError,
    InputsChangedError,
    MissingInputError,
    OutputError,
    RunDirMismatchError,
)
from virnucpro.infer.job.manifest import (
    RunManifest,
    describe_input_change,
    model_spec,
    package_versions,
)
from virnucpro.infer.job.quality import quality_counts
from virnucpro.infer.job.reporting import Reporter
from virnucpro.infer.job.rundir import SPOOL_DIR, move_old_run_aside, used_entries
from virnucpro.infer.models import ModelInfo
from virnucpro.infer.plugins import PluginHost
from virnucpro.infer.windows import window_plan_lengths


@dataclass(frozen=True)
class Shared:
    """What the lead found, for every process of the session."""

    manifest: RunManifest
    model: ModelInfo | None
    """None when nothing is left to embed (the model is not even described)."""
    done: np.ndarray
    """Input indices valid checkpoints hold."""
    done_by_rank: dict[int, int] = field(default_factory=dict)
    output_intact: bool = False
    """The output is written and verified: nothing to do at all."""
    set_aside: int = 0
    """Files this scan moved into quarantine (their rows are computed again)."""

    @property
    def complete(self) -> bool:
        return len(self.done) == self.manifest.num_sequences


@dataclass
class Session:
    """A process's view of the session: the shared facts plus its own input index."""

    run_dir: Path
    shared: Shared
    index: SequenceIndex

    @property
    def manifest(self) -> RunManifest:
        return self.shared.manifest

    def batch_costs(self) -> tuple[np.ndarray, int]:
        """(lengths, max_length) that give each sequence its cost in a batch: windows
        cost their tokens, a whole sequence its residues (no truncation)."""
        manifest = self.manifest
        if manifest.long == "window":
            costs = window_plan_lengths(
                self.index.lengths, manifest.max_length, manifest.window_overlap
            )
            return costs, 0
        return self.index.lengths, manifest.truncate_at


def set_up_run(
    config: RunConfig,
    run_dir: Path,
    target: Target,
    plugins: PluginHost,
    reporter: Reporter,
    force: bool,
) -> Session:
    """Claim ``run_dir`` (``force``: move an old run beside it), index, describe the
    model, write the manifest."""
    index = None
    if force and used_entries(run_dir):
        # Bad inputs are found before the old run is moved aside, not after.
        _check_format(config.output_format, plugins)
        index = build_index(
            config.inputs, config.input_type, config.chunk_size, None, config.strict
        )
    stored = _claim(run_dir, config, force, reporter, plugins)
    if stored is not None:
        return _resume_stored(run_dir, stored, target, plugins, reporter)
    _check_format(config.output_format, plugins)
    if index is None or index.spooled:
        # A gzip input's spool belongs in the run directory, which now is free.
        index = build_index(
            config.inputs, config.input_type, config.chunk_size, run_dir / SPOOL_DIR, config.strict
        )
    model = _describe(plugins, config.model, config.random_weights, config.seed)
    layers = resolve_layers(config.layers, model.num_layers)
    precision = resolve_precision(config.precision, target.device)
    check_fits(model, target.device, DTYPES[precision])
    manifest = RunManifest(
        inputs=[str(Path(path).resolve()) for path in index.files],
        input_sizes=[Path(path).stat().st_size for path in index.files],
        input_fingerprint=index.fingerprint,
        input_type=index.input_type,
        chunk_size=index.chunk_size,
        strict=config.strict,
        num_sequences=len(index),
        model=model_spec(config.model),
        model_source=model.source,
        model_backend=model.backend,
        model_checksum=model.checksum,
        random_weights=model.random_weights,
        seed=model.seed,
        num_layers=model.num_layers,
        embed_dim=model.embed_dim,
        layers=list(layers),
        pooling=list(config.pooling),
        precision=precision,
        token_budget=resolve_token_budget(
            config.token_budget, target.device, model, len(layers), precision, config.max_length
        ),
        token_budget_auto=config.token_budget is None,
        max_length=config.max_length,
        long=config.long,
        window_overlap=config.window_overlap,
        checkpoint_every=config.checkpoint_every,
        checkpoint_interval=config.checkpoint_interval,
        checkpoint_bytes=config.checkpoint_bytes,
        store_dtype=config.store_dtype,
        compression=config.compression,
        output_format=config.output_format,
        keep_checkpoints=config.keep_checkpoints,
        quality=quality_counts(index, config.max_length, config.long),
        versions=package_versions(),
    )
    check_run_space(run_dir, manifest.to_dict(), index.lengths)
    write_manifest(run_dir, manifest.to_dict())
    return Session(run_dir, _scan(run_dir, manifest, model, reporter, plugins), index)


def set_up_resume(
    run_dir: Path, target: Target, plugins: PluginHost, reporter: Reporter
) -> Session:
    """The stored run, its inputs checked, what is done, and (unless nothing is left)
    its model described and checked against the recorded checksum."""
    return _resume_stored(run_dir, read_run_manifest(run_dir), target, plugins, reporter)


def read_run_manifest(run_dir: Path) -> RunManifest:
    try:
        return RunManifest.from_dict(read_manifest(run_dir))
    except ManifestMismatchError as exc:
        raise RunDirMismatchError(str(exc)) from None
    except CheckpointError as exc:
        raise MissingInputError(str(exc)) from None


def join_session(run_dir: Path, shared: Shared) -> Session:
    """A torchrun rank other than 0: the same inputs, checked by fingerprint. Gzip inputs
    are spooled to a temporary folder of its own (rank 0 owns the run's spool)."""
    manifest = shared.manifest
    index = build_index(manifest.inputs, manifest.input_type, manifest.chunk_size)
    change = describe_input_change(manifest, index.fingerprint, len(index))
    if change is not None:
        raise InputsChangedError(f"this rank sees other inputs than rank 0: {change}")
    return Session(run_dir, shared, index)


def _resume_stored(
    run_dir: Path,
    stored: RunManifest,
    target: Target,
    plugins: PluginHost,
    reporter: Reporter,
) -> Session:
    index = _rebuild_index(run_dir, stored)
    shared = _scan(run_dir, stored, None, reporter, plugins)
    _check_nothing_lost(run_dir, shared, plugins)
    if shared.complete:
        return Session(run_dir, shared, index)
    model = _describe(plugins, stored.model, stored.random_weights, stored.seed or 0)
    if model.checksum != stored.model_checksum:
        raise RunDirMismatchError(
            f"the weights of {stored.model} changed since the run started "
            f"(sha256 {stored.model_checksum} -> {model.checksum}); "
            "restore them, or start over with `virnucpro run ... --force`"
        )
    check_fits(model, target.device, DTYPES[stored.precision])
    manifest = stored
    if stored.token_budget_auto:
        manifest = stored.with_token_budget(
            resolve_token_budget(
                None, target.device, model, len(stored.layers), stored.precision, stored.max_length
            )
        )
    return Session(run_dir, Shared(manifest, model, shared.done, shared.done_by_rank), index)


def _describe(plugins: PluginHost, spec: str, random_weights: bool, seed: int) -> ModelInfo:
    backend = plugins.model_registry().resolve(spec)
    return backend.describe(spec, random_weights=random_weights, seed=seed)


def _check_format(name: str, plugins: PluginHost) -> None:
    known = plugins.writers().names()
    if name not in known:
        raise ConfigError(
            f"output format {name!r} is not registered (registered: {', '.join(known) or 'none'})"
        )


def _scan(
    run_dir: Path,
    manifest: RunManifest,
    model: ModelInfo | None,
    reporter: Reporter,
    plugins: PluginHost,
) -> Shared:
    """What is done: every row when the written output is intact (its checkpoints may
    be gone), else what valid checkpoints hold, those the output's per-token parts
    restore included. Every file set aside is said in one line, and so is a damaged
    output."""
    writer = plugins.writers().get(manifest.output_format)
    if writer.output_path(run_dir).exists():
        problem = writer.check(run_dir)
        if problem is None:
            done = np.arange(manifest.num_sequences, dtype=np.int64)
            return Shared(manifest, model, done, output_intact=True)
        reporter.say(f"the output is damaged: {problem}")
    restored = restore_checkpoints(run_dir)
    if restored:
        reporter.say(f"{len(restored)} checkpoints restored from the output's per-token parts")
    found = resume_from_checkpoints(run_dir, manifest.to_dict(), quarantine=True)
    for moved in found.quarantined:
        reporter.say(moved.message)
    by_rank: dict[int, int] = {}
    for info in found.checkpoints:
        if info.rank is not None:
            by_rank[info.rank] = by_rank.get(info.rank, 0) + info.num_sequences
    return Shared(manifest, model, found.done_indices, by_rank, set_aside=len(found.quarantined))


def _check_nothing_lost(run_dir: Path, shared: Shared, plugins: PluginHost) -> None:
    """A damaged output whose checkpoints were removed (and not restored from its parts)
    cannot be rebuilt: say so. Checkpoints this scan set aside as damaged are not
    removed ones: their rows are computed again, as any resume does."""
    writer = plugins.writers().get(shared.manifest.output_format)
    checkpoints = any((run_dir / "checkpoints").glob("rank_*/*.h5")) or shared.set_aside
    if writer.output_path(run_dir).exists() and not shared.output_intact and not checkpoints:
        raise OutputError(
            f"{writer.output_path(run_dir)} is damaged and its checkpoints were removed "
            f"after the merge: recompute it with `virnucpro run ... -o {run_dir} --force`"
        )


def _rebuild_index(run_dir: Path, stored: RunManifest) -> SequenceIndex:
    """The index of the run's own inputs; refuse inputs that changed, saying how."""
    missing = [path for path in stored.inputs if not Path(path).is_file()]
    if missing:
        raise MissingInputError(
            f"input of the run not found: {', '.join(missing)}; restore it to resume"
        )
    index = build_index(stored.inputs, stored.input_type, stored.chunk_size, run_dir / SPOOL_DIR)
    change = describe_input_change(stored, index.fingerprint, len(index))
    if change is not None:
        raise InputsChangedError(change)
    return index


def _claim(
    run_dir: Path, config: RunConfig, force: bool, reporter: Reporter, plugins: PluginHost
) -> RunManifest | None:
    """None: ``run_dir`` is free (or freed by ``force``). The stored manifest: it holds
    this very run, which then continues like ``resume`` (complete: it says so)."""
    used = used_entries(run_dir)
    if not used:
        return None
    if force:
        moved = move_old_run_aside(run_dir)
        reporter.say(f"--force: the previous run in {run_dir} was moved to {moved}")
        return None
    try:
        stored = RunManifest.from_dict(read_manifest(run_dir))
    except (CheckpointError, ConfigError):
        stored = None
    differences = _differences(config, stored) if stored is not None else ["no readable manifest"]
    if stored is None or differences:
        raise RunDirMismatchError(
            f"{run_dir} already holds another run ({'; '.join(differences)}): "
            f"continue it with `virnucpro resume {run_dir}`, choose another output "
            "directory, or start over with --force"
        )
    if plugins.writers().get(stored.output_format).output_path(run_dir).exists():
        # Whether it is intact is read once, by the scan that follows.
        return stored
    done = resume_from_checkpoints(
        run_dir, stored.to_dict(), quarantine=False, verify_checksum=False, with_parts=True
    )
    if done.num_left:
        raise RunDirMismatchError(
            f"{run_dir} holds this run, stopped at {done.num_done:,}/{stored.num_sequences:,} "
            f"sequences: continue it with `virnucpro resume {run_dir}`, or start over with --force"
        )
    return stored


def _differences(config: RunConfig, stored: RunManifest) -> list[str]:
    """What this command asks that the stored run did not compute (``auto`` matches)."""
    asked: dict[str, Any] = {
        "inputs": [str(Path(p).resolve()) for p in config.inputs],
        "model": model_spec(config.model),
        "random weights": config.random_weights,
        "input type": config.input_type,
        "strict": config.strict,
        "pooling": list(config.pooling),
        "max length": config.max_length,
        "long sequences": config.long,
        "output format": config.output_format,
        "store dtype": config.store_dtype,
        "compression": config.compression,
    }
    have: dict[str, Any] = {
        "inputs": stored.inputs,
        "model": stored.model,
        "random weights": stored.random_weights,
        "input type": stored.input_type,
        "strict": stored.strict,
        "pooling": stored.pooling,
        "max length": stored.max_length,
        "long sequences": stored.long,
        "output format": stored.output_format,
        "store dtype": stored.store_dtype,
        "compression": stored.compression,
    }
    if config.random_weights:
        asked["seed"], have["seed"] = config.seed, stored.seed
    if config.input_type == "dna":
        asked["chunk size"], have["chunk size"] = config.chunk_size, stored.chunk_size
    if config.precision != "auto":
        asked["precision"], have["precision"] = config.precision, stored.precision
    try:
        asked["layers"] = list(resolve_layers(config.layers, stored.num_layers))
    except ConfigError:
        asked["layers"] = list(config.layers or ())
    have["layers"] = stored.layers
    return [f"{key} {have[key]!r} -> {asked[key]!r}" for key in asked if asked[key] != have[key]]
