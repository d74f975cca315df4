"""Liveness of torchrun ranks: a rank that stops making progress ends the job.

Every rank counts its finished batches and publishes the count to the process group's
key-value store every few seconds from a thread; every rank watches the others' counts.
A rank whose count has not moved for ``timeout`` seconds (or three times the slowest gap
seen between its batches, when that is longer; before its first batch, at least
``STARTUP_TIMEOUT_S``), and which has not finished its share, is stalled: the watcher
says which rank and since when, then exits this process with the worker-failed code, so
torchrun stops the job and a scheduler can requeue it. Every finished batch is already
checkpointed. Change is judged by each watcher's own clock: nodes' clocks need not agree.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

DONE = "done"
STARTUP_TIMEOUT_S = 1800.0
"""Before its first batch a rank loads and compiles the model: minutes, not a stall."""
KEY = "virnucpro/progress/{rank}"
WORKER_FAILED_EXIT = 13
"""The cli's exit code for a failed worker or rank (README)."""


class RankWatch:
    """Publish this rank's progress and watch every other rank's (a context manager)."""

    def __init__(
        self,
        store: Any,
        rank: int,
        size: int,
        timeout: float,
        say: Callable[[str], None],
        exit: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.rank, self.size = store, rank, size
        self.timeout, self.say, self.exit, self.clock = timeout, say, exit, clock
        self.period = max(0.2, min(5.0, timeout / 4))
        self.count = 0
        self.finished = False
        self._stop = threading.Event()
        self._seen: dict[int, tuple[str, float, float]] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True, name="virnucpro-watch")

    def progressed(self) -> None:
        """A batch finished; the first one is published at once (it ends start-up)."""
        self.count += 1
        if self.count == 1:
            self._publish()

    def done(self) -> None:
        self.finished = True
        self._publish()

    def __enter__(self) -> RankWatch:
        self._publish()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _publish(self) -> None:
        value = DONE if self.finished else str(self.count)
        self.store.set(KEY.format(rank=self.rank), value)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._publish()
            stalled = self.stalled()
            if stalled is not None:
                rank, seconds = stalled
                self.say(
                    f"error: rank {rank} made no progress for {seconds:.0f} s; ending the "
                    "job so it can be requeued (finished work is checkpointed; resume the run)"
                )
                self.exit(WORKER_FAILED_EXIT)
                return

    def stalled(self) -> tuple[int, float] | None:
        """(rank, seconds without progress) of a stalled rank, or None."""
        now = self.clock()
        for rank in range(self.size):
            if rank == self.rank:
                continue
            key = KEY.format(rank=rank)
            value = self.store.get(key).decode() if self.store.check([key]) else "starting"
            if value == DONE:
                continue
            last_value, since, slowest = self._seen.get(rank, (value, now, 0.0))
            if value != last_value:
                slowest = max(slowest, now - since)
                since = now
            self._seen[rank] = (value, since, slowest)
            limit = max(self.timeout, 3 * slowest)
            if value in ("starting", "0"):
                limit = max(limit, STARTUP_TIMEOUT_S)
            if now - since > limit:
                return rank, now - since
        return None
