"""What runs inside each queue worker process (one per GPU, or per CPU share).

:func:`embedding_worker` is the queue manager's ``worker_function``: it runs once per
process, loads the model through the registry every plugin filled (the run's precision,
compiled on CUDA like the single-device path) and returns the unit handler. Each unit
is embedded with :func:`virnucpro.infer.embed_rank` into the worker's own rank
directory (rank = worker slot; every call writes under a new session id, so a
respawned worker never reuses a name) and ends with its checkpoints written before the
unit is reported done.

A unit may come back after its worker died: before running it the handler reads what
the run directory already holds (without moving anything, other writers are live) and
skips those rows, so no row is ever written twice (lesson 5).

Units are packed in-process (no DataLoader processes): a loader spawned per unit cost
seconds of imports each time, measured as 126K vs 300K tokens/s on one H200 with 650M,
while packing in the worker's own thread runs at over 5M residues/s and overlaps the
GPU's work on the previous batch.

Workers ignore SIGINT and SIGTERM: a Ctrl-C reaches the whole process group, and the
parent decides; it sets ``stop`` and every worker stops at its next batch boundary.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro.ckpt import resume_from_checkpoints
from virnucpro.cli.plugins import load_plugins
from virnucpro.cli.settings import DTYPES
from virnucpro.data import SequenceIndex
from virnucpro.infer import (
    STOPPED,
    CheckpointPolicy,
    LoadedModel,
    ModelRegistry,
    PackedForward,
    current_worker_slot,
    embed_rank,
    without_done,
)


@dataclass(frozen=True)
class UnitResult:
    """What one unit did in this attempt (skipped rows are not counted)."""

    status: str
    sequences: int
    tokens: int
    skipped: int


class StopFlag:
    """``should_stop`` for embed_rank, backed by the parent's multiprocessing Event."""

    def __init__(self, event: Any) -> None:
        self._event = event

    def __call__(self) -> bool:
        return self._event.is_set()


def load_run_model(manifest: Mapping[str, Any], device: torch.device) -> tuple[LoadedModel, Any]:
    """The run's model on ``device`` through the plugin-filled registry; its weights must
    be the ones the manifest recorded."""
    registry = ModelRegistry()
    load_plugins(os.environ).register_models(registry)
    backend = registry.resolve(manifest["model"])
    loaded = backend.load(
        manifest["model"],
        random_weights=bool(manifest["random_weights"]),
        seed=int(manifest["seed"] or 0),
        device=device,
        dtype=DTYPES[manifest["precision"]],
    )
    if loaded.checksum != manifest["model_checksum"]:
        raise RuntimeError(
            f"the weights of {manifest['model']} on this machine differ from the run's "
            f"(sha256 {loaded.checksum} vs {manifest['model_checksum']})"
        )
    return loaded, backend


def warm_up(forward: PackedForward, manifest: Mapping[str, Any], device: torch.device) -> None:
    """Run full-budget batches of two token counts, so compilation, including the
    recompile that makes the token count dynamic, is not timed."""
    budget = int(manifest["token_budget"])
    length = min(int(manifest["max_length"]) or 1022, 300) + 2
    count = max(2, budget // length)
    layers = [int(layer) for layer in manifest["layers"]]
    with torch.inference_mode():
        for sequences in (count, count - 1):
            cu_seqlens = torch.arange(sequences + 1, dtype=torch.int32, device=device) * length
            input_ids = torch.randint(4, 24, (sequences * length,), device=device)
            forward(input_ids, cu_seqlens, length, layers)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_worker(
    device: torch.device,
    *,
    run_dir: Path,
    manifest: dict[str, Any],
    index: SequenceIndex,
    stop: Any,
    world_size: int,
    warmup: bool = False,
) -> Callable[[Sequence[np.ndarray], Callable[..., None]], UnitResult]:
    """Load the model once on ``device``; return the handler of one unit (its batches)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    loaded, backend = load_run_model(manifest, device)
    forward = backend.packed_forward(loaded, compile=device.type == "cuda")
    if warmup:
        warm_up(forward, manifest, device)
    rank = current_worker_slot() or 0
    policy = CheckpointPolicy(
        int(manifest["checkpoint_every"]), float(manifest["checkpoint_interval"])
    )
    should_stop = StopFlag(stop)

    def handle(batches: Sequence[np.ndarray], progress: Callable[..., None]) -> UnitResult:
        if should_stop():
            return UnitResult(STOPPED, 0, 0, 0)
        done = resume_from_checkpoints(
            run_dir, manifest, quarantine=False, verify_checksum=False
        ).done_indices
        todo, skipped = without_done(batches, done)
        if skipped:
            progress(skipped)
        outcome = embed_rank(
            run_dir,
            manifest,
            index,
            todo,
            forward,
            device,
            rank=rank,
            world_size=world_size,
            policy=policy,
            num_workers=0,
            on_batch=progress,
            should_stop=should_stop,
        )
        return UnitResult(outcome.status, outcome.sequences, outcome.tokens, skipped)

    return handle
