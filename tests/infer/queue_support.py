"""Queue workers that stall or hang, for the liveness and orphan tests.

A plain module (not a test file) so that spawned queue workers can import it by name.
"""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from virnucpro.infer.queue_manager import current_unit_attempt


def stalling_worker(
    device: torch.device,
    stop_once: str | None = None,
    stop_on: int | None = None,
    hang_on: int | None = None,
    gaps_s: tuple[float, ...] = (),
):
    """Squares its items. The unit holding `stop_on` reports one item, then SIGSTOPs its
    own process, but only the first time (a marker file at `stop_once` remembers); the
    unit holding `hang_on` sleeps for an hour; every unit reports progress after each
    pause in `gaps_s` (a slow device)."""

    def handle(unit: list[int], report: Callable[[int], None]) -> dict:
        if stop_on in unit and stop_once is not None and not Path(stop_once).exists():
            Path(stop_once).touch()
            report(1)
            os.kill(os.getpid(), signal.SIGSTOP)
        if hang_on in unit:
            time.sleep(3600)
        for gap in gaps_s:
            time.sleep(gap)
            report(0)
        report(len(unit))
        return {
            "squares": [x * x for x in unit],
            "pid": os.getpid(),
            "attempt": current_unit_attempt(),
        }

    return handle
