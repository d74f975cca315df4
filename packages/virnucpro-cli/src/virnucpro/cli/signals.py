"""SIGINT and SIGTERM: the first asks the pipeline to stop at the next batch boundary
(after checkpointing what is finished); a second exits at once.

Exiting at once is safe because checkpoints are written atomically: the files already
written stay valid, and a half-written one is never visible under its final name.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from virnucpro.cli.errors import StoppedBySignal

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager that installs the handlers; the pipeline polls ``requested``."""

    def __init__(self, stderr_fd: int = 2) -> None:
        self._stderr_fd = stderr_fd
        self._previous: dict[int, Any] = {}
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped_error(self, run_dir: Path) -> StoppedBySignal:
        """The error to raise once the pipeline has stopped and checkpointed."""
        signum = self.signum if self.signum is not None else signal.SIGINT
        name = signal.Signals(signum).name
        return StoppedBySignal(
            signum,
            f"stopped by {name}; finished work is checkpointed; "
            f"continue with: virnucpro resume {run_dir}",
        )

    def _say(self, text: str) -> None:
        """os.write, not print: a handler may interrupt a print in the main thread."""
        with contextlib.suppress(OSError):
            os.write(self._stderr_fd, f"\n{text}\n".encode())

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            self._say(
                f"{name}: stopping at the next batch boundary and checkpointing; "
                "send it again to exit at once"
            )
            return
        self._say(f"{name} again: exiting now; checkpoints already written stay valid")
        os._exit(128 + signum)

    def __enter__(self) -> GracefulStop:
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
