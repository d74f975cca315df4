"""What runs inside each queue worker process (one per GPU, or per CPU share).

:func:`embedding_worker` is the queue manager's ``worker_function``: it runs once per
process, loads the model from the description the parent recorded and returns the unit
handler. Each unit is embedded into the worker's own rank directory (rank = worker
slot; every call writes under a new session id, so a respawned worker never reuses a
name) and ends with its checkpoints written before the unit is reported done.

A unit may come back after its worker died: before running it again the handler reads
what the run directory already holds (without moving anything, other writers are live)
and skips those rows, so no row is ever written twice. A unit handed out for the first
time holds no row anyone wrote (the plan leaves out what was done), so it is not read
for: the read opens every checkpoint of the run, and grew with it on every unit.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from virnucpro.ckpt import resume_from_checkpoints
from virnucpro.infer.job.compute import embed_batches, load_forward
from virnucpro.infer.job.setup import Session
from virnucpro.infer.pipeline import STOPPED
from virnucpro.infer.plugins import load_plugins
from virnucpro.infer.queue_manager import current_unit_attempt, current_worker_slot
from virnucpro.infer.registry import PackedForward
from virnucpro.infer.work_units import without_done


@dataclass(frozen=True)
class UnitResult:
    """What one unit did in this attempt (skipped rows are not counted)."""

    status: str
    sequences: int
    tokens: int
    skipped: int


def warm_up(forward: PackedForward, session: Session, device: torch.device) -> None:
    """Run full-budget batches of two token counts, so compilation, including the
    recompile that makes the token count dynamic, is not timed (benchmarks)."""
    manifest = session.manifest
    length = min(manifest.max_length or 1022, 300) + 2
    count = max(2, manifest.token_budget // length)
    with torch.inference_mode():
        for sequences in (count, count - 1):
            cu_seqlens = torch.arange(sequences + 1, dtype=torch.int32, device=device) * length
            input_ids = torch.randint(4, 24, (sequences * length,), device=device)
            forward(input_ids, cu_seqlens, length, manifest.layers)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_worker(
    device: torch.device,
    *,
    session: Session,
    stop: Any,
    world_size: int,
    warmup: bool = False,
) -> Callable[[Sequence[np.ndarray], Callable[..., None]], UnitResult]:
    """Load the model once on ``device``; return the handler of one unit (its batches)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    forward = load_forward(session, device, load_plugins(os.environ))
    if warmup:
        warm_up(forward, session, device)
    rank = current_worker_slot() or 0
    manifest = session.manifest.to_dict()

    def handle(batches: Sequence[np.ndarray], progress: Callable[..., None]) -> UnitResult:
        if stop.is_set():
            return UnitResult(STOPPED, 0, 0, 0)
        todo, skipped = list(batches), 0
        if current_unit_attempt():
            done = resume_from_checkpoints(
                session.run_dir, manifest, quarantine=False, verify_checksum=False
            ).done_indices
            todo, skipped = without_done(batches, done)
        if skipped:
            progress(skipped)
        outcome = embed_batches(
            session,
            todo,
            forward,
            device,
            rank=rank,
            world_size=world_size,
            workers=0,
            on_batch=progress,
            should_stop=stop.is_set,
        )
        return UnitResult(outcome.status, outcome.sequences, outcome.tokens, skipped)

    return handle
