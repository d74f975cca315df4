"""The work of ONE rank on ONE device: its batches in, checkpoints out, stoppable.

``embed_rank`` is what ``virnucpro run``/``resume`` call for a single device, and what
a multi-GPU queue worker or a torchrun rank calls for its share of the plan. It owns
the whole loop of a rank:

    PackedBatchDataset(batches) -> DataLoader workers (or in-process when 0)
    -> AsyncInferenceRunner (the model's precision, no autocast)
    -> rows accumulated into a ckpt.CheckpointBatch
    -> CheckpointTrigger asked at every batch boundary
    -> AsyncCheckpointWriter (GPU memory allocated/peak in each file's header)
    -> a final checkpoint.

A checkpoint never splits a packed batch, and a stop request (``should_stop`` true at
a batch boundary) checkpoints every finished row and returns ``"stopped"``; the batch
the runner had in flight is dropped and computed again on resume. Nothing here reads
the run directory: the caller decides what is done (``ckpt.resume_from_checkpoints``)
and plans only the rest (``data.plan_batches(exclude=done)``), so every input index is
written exactly once across sessions.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch

from virnucpro.ckpt import AsyncCheckpointWriter, CheckpointBatch, CheckpointTrigger
from virnucpro.data import PackedBatchDataset, SequenceIndex, create_async_dataloader
from virnucpro.infer.registry import PackedForward
from virnucpro.infer.runner import AsyncInferenceRunner, InferenceResult

FINISHED: Final = "finished"
STOPPED: Final = "stopped"
REASON_STOP = "stop_signal"
REASON_FINAL = "final"
REASON_SIZE = "size"

BatchCallback = Callable[[int, int], None]
"""``on_batch(sequences, tokens)`` after each finished batch (BOS/EOS counted as tokens)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a rank checkpoints: after ``every`` sequences, ``interval_s`` seconds, or
    once the rows it holds reach ``max_bytes``, whichever comes first. The size bound
    keeps host memory bounded whatever the pooling: per-token rows of 5,000 proteins
    are gigabytes, far before 10,000 sequences. The run's values come from RunConfig."""

    every: int
    interval_s: float
    max_bytes: int


@dataclass
class RankOutcome:
    """What one call of :func:`embed_rank` did (this session's work only)."""

    status: Literal["finished", "stopped"]
    sequences: int = 0
    tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    checkpoints: list[Path] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    """The runner's ``get_statistics()`` (throughput, data wait, peak memory, ...)."""


def embed_rank(
    run_dir: Path,
    manifest: Mapping[str, Any],
    index: SequenceIndex,
    batches: Sequence[np.ndarray],
    forward: PackedForward,
    device: torch.device | str,
    *,
    rank: int = 0,
    world_size: int = 1,
    policy: CheckpointPolicy,
    num_workers: int = 2,
    on_batch: BatchCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RankOutcome:
    """Embed ``batches`` (input indices, e.g. this rank's share of the plan) on ``device``.

    ``manifest``: the run's manifest (``layers``, ``pooling``, ``max_length``, ``long``,
    ``store_dtype`` and the keys every checkpoint header carries). ``forward``: the
    backend's packed forward of a model already on ``device`` in the run's precision.
    ``num_workers`` DataLoader processes build the batches (0: in this process).
    Returns ``"finished"`` once every batch is checkpointed, ``"stopped"`` after a stop
    request; a failure raises, and whatever checkpoints were already queued are still
    written.
    """
    device = torch.device(device)
    stop = should_stop or _never
    started = time.perf_counter()
    outcome = RankOutcome(status=FINISHED)
    if not batches:
        return outcome
    layers = [int(layer) for layer in manifest["layers"]]
    runner = AsyncInferenceRunner(
        forward,
        device,
        layers,
        tuple(manifest["pooling"]),
        store_dtype=manifest.get("store_dtype", "float32"),
    )
    whole = manifest.get("long", "truncate") != "truncate"
    dataset = PackedBatchDataset(index, batches, 0 if whole else int(manifest["max_length"]))
    trigger = CheckpointTrigger(policy.every, policy.interval_s)
    pending: list[CheckpointBatch] = []
    held = [0]

    def flush(reason: str) -> None:
        held[0] = 0
        if pending:
            batch = CheckpointBatch.join(pending)
            allocated, peak = _gpu_memory(device)
            outcome.checkpoints.append(
                writer.write_checkpoint_async(batch, reason, allocated, peak)
            )
            pending.clear()
        trigger.reset()

    with AsyncCheckpointWriter(run_dir, manifest, rank=rank, world_size=world_size) as writer:
        if stop():
            outcome.status = STOPPED
        else:
            for result in runner.run(_batches(dataset, num_workers)):
                pending.append(_rows(result))
                held[0] += sum(array.nbytes for array in result.outputs.values())
                tokens = int(result.lengths.sum()) + 2 * result.num_sequences
                outcome.sequences += result.num_sequences
                outcome.tokens += tokens
                outcome.batches += 1
                if on_batch is not None:
                    on_batch(result.num_sequences, tokens)
                if stop():
                    flush(REASON_STOP)
                    outcome.status = STOPPED
                    break
                fire, reason = trigger.should_checkpoint(result.num_sequences)
                if not fire and held[0] >= policy.max_bytes:
                    fire, reason = True, REASON_SIZE
                if fire:
                    flush(reason)
            else:
                flush(REASON_FINAL)
        writer.wait_all()
    outcome.statistics = runner.get_statistics()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _never() -> bool:
    return False


def _rows(result: InferenceResult) -> CheckpointBatch:
    return CheckpointBatch(
        indices=result.indices,
        ids=result.sequence_ids,
        lengths=result.lengths,
        truncated=result.truncated,
        outputs=result.outputs,
    )


def _gpu_memory(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return 0, 0
    return int(torch.cuda.memory_allocated(device)), int(torch.cuda.max_memory_allocated(device))


def _batches(dataset: PackedBatchDataset, num_workers: int) -> Iterator[dict]:
    """The packed batches in plan order, from worker processes or from this one."""
    if num_workers == 0:
        yield from dataset
        return
    loader = create_async_dataloader(
        dataset,
        batch_size=None,
        num_workers=min(num_workers, len(dataset)),
        persistent_workers=False,
    )
    with _sigint_blocked():
        batches: Iterable[dict] = iter(loader)
    yield from batches


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Start workers with SIGINT blocked: they inherit the mask, so a Ctrl-C sent to the
    whole process group before their own start-up ignores it cannot kill them; this
    process gets any SIGINT that arrived meanwhile once the mask is restored."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
