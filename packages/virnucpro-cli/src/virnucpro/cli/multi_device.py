"""Several devices of one node: the plan in work units over one process per device.

The parent (holding the run lock) cuts what is left into units and gives them to
:class:`virnucpro.infer.BatchQueueManager`, which spawns one process per device (bound
to its physical GPU, or a share of the CPU cores) running
:func:`virnucpro.cli.device_worker.embedding_worker`. A worker that dies is respawned
and its unit re-queued; the new attempt skips what the dead worker checkpointed.

Progress comes from the queue's events: one bar per device plus the total. SIGINT or
SIGTERM in the parent sets a multiprocessing Event that every worker checks at its
batch boundaries; the remaining units then return at once as stopped.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.cli.device_worker import UnitResult, embedding_worker
from virnucpro.cli.errors import CliError
from virnucpro.cli.progress import ProgressDisplay
from virnucpro.cli.settings import Target
from virnucpro.cli.signals import GracefulStop
from virnucpro.data import SequenceIndex
from virnucpro.infer import (
    STOPPED,
    BatchQueueManager,
    QueueEvent,
    QueueRunError,
    cut_into_units,
)

STOP_POLL_S = 0.1


@dataclass(frozen=True)
class DevicesOutcome:
    """This session's work over every device."""

    stopped: bool
    sequences: int
    tokens: int


class _EventProgress:
    """Queue events -> bar advances: each worker's counters are cumulative, so the bar
    moves by the change (negative when a dead worker's unfinished work is taken back;
    the retry reports the rows it skips, so the total never counts a row twice)."""

    def __init__(
        self, display: ProgressDisplay, labels: Sequence[str], say: Callable[[str], None]
    ) -> None:
        self.display = display
        self.labels = list(labels)
        self.say = say
        self.seen = {slot: (0, 0) for slot in range(len(labels))}

    def __call__(self, event: QueueEvent) -> None:
        slot = event.worker.worker_id
        if event.kind == "unit_failed":
            self.say(
                f"virnucpro: worker {self.labels[slot]} failed ({event.detail}); "
                f"respawning it; unit {event.unit_id} goes back to the queue"
            )
        elif event.kind == "retired":
            self.say(f"virnucpro: worker {self.labels[slot]} failed too often; retired")
        sequences, tokens = event.worker.sequences_done, event.worker.tokens_done
        before_sequences, before_tokens = self.seen[slot]
        if (sequences, tokens) != (before_sequences, before_tokens):
            self.seen[slot] = (sequences, tokens)
            self.display.advance(
                self.labels[slot], sequences - before_sequences, tokens - before_tokens
            )


def embed_on_devices(
    run_dir: Path,
    manifest: dict[str, Any],
    index: SequenceIndex,
    batches: Sequence[np.ndarray],
    targets: Sequence[Target],
    display: ProgressDisplay,
    stop: GracefulStop,
    say: Callable[[str], None],
    warmup: bool = False,
) -> DevicesOutcome:
    """Embed ``batches`` over one worker process per target; bars must already exist
    under each target's label. ``say`` prints a line (a worker failed and was respawned)."""
    context = multiprocessing.get_context("spawn")
    stop_event = context.Event()
    manager = BatchQueueManager(
        embedding_worker,
        [str(target.device) for target in targets],
        worker_kwargs={
            "run_dir": run_dir,
            "manifest": manifest,
            "index": index,
            "stop": stop_event,
            "world_size": len(targets),
            "warmup": warmup,
        },
    )
    units = cut_into_units(batches, index.ids, len(targets))
    finished = threading.Event()
    bridge = threading.Thread(target=_forward_stop, args=(stop, stop_event, finished), daemon=True)
    bridge.start()
    try:
        results: dict[int, UnitResult] = manager.run(
            units, _EventProgress(display, [t.label for t in targets], say)
        )
    except QueueRunError as exc:
        raise CliError(f"{exc}; finished work is checkpointed: resume {run_dir}") from None
    finally:
        finished.set()
        bridge.join()
    done = list(results.values())
    return DevicesOutcome(
        stopped=stop_event.is_set() or any(r.status == STOPPED for r in done),
        sequences=sum(r.sequences for r in done),
        tokens=sum(r.tokens for r in done),
    )


def _forward_stop(stop: GracefulStop, event: Any, finished: threading.Event) -> None:
    """The parent's signal handler only records the request; pass it to the workers."""
    while not finished.wait(STOP_POLL_S):
        if stop.requested:
            event.set()
            return
