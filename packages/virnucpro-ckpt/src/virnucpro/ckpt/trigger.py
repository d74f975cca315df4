"""When to checkpoint: after a sequence count or a time, whichever comes first."""

from __future__ import annotations

import time
from collections.abc import Callable

REASON_COUNT = "sequence_count"
REASON_TIME = "time"
REASON_FINAL = "final"


class CheckpointTrigger:
    """Asked once per finished batch, so a checkpoint never splits a packed batch.

    ``should_checkpoint(n)`` adds the batch's ``n`` sequences and answers
    ``(fire, reason)``; reason is ``"sequence_count"`` or ``"time"`` (``""`` when
    not firing). Call ``reset()`` after writing the checkpoint.
    """

    def __init__(
        self,
        seq_threshold: int = 10_000,
        time_threshold_sec: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seq_threshold < 1:
            raise ValueError(f"checkpoint seq_threshold must be at least 1, got {seq_threshold}")
        if time_threshold_sec <= 0:
            raise ValueError(f"checkpoint time threshold must be > 0 s, got {time_threshold_sec}")
        self.seq_threshold = seq_threshold
        self.time_threshold_sec = time_threshold_sec
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.pending_sequences = 0
        self._since = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self._since

    def should_checkpoint(self, num_new_sequences: int) -> tuple[bool, str]:
        self.pending_sequences += num_new_sequences
        if self.pending_sequences == 0:
            return False, ""
        if self.pending_sequences >= self.seq_threshold:
            return True, REASON_COUNT
        if self.elapsed() >= self.time_threshold_sec:
            return True, REASON_TIME
        return False, ""
