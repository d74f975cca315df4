"""How the engine tells its caller what happens: progress, notices, a stop flag.

The engine calls these and nothing else; the cli implements them with rich bars and
signal handlers; the Python API's default, :class:`LoggingReporter`, shows no progress
and sends notices to the ``virnucpro`` logger.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

StopFlag = Callable[[], bool]
"""Asked at every batch boundary; true means checkpoint what is finished and stop."""


class Progress(Protocol):
    """Counts for one run session: one bar per worker plus the total."""

    def add_worker(self, label: str, total: int | None, completed: int) -> None: ...

    def advance(self, label: str, sequences: int, tokens: int) -> None: ...


class Reporter(Protocol):
    """What a front end shows."""

    def progress(self, total: int, completed: int) -> AbstractContextManager[Progress]:
        """Open the display once the total and the rows already done are known."""
        ...

    def say(self, line: str) -> None:
        """A one-line notice (an old run moved aside, a file quarantined, a worker
        respawned) that must not go unseen."""
        ...


class NoProgress:
    """Counts nothing: what ranks other than 0 report to."""

    def add_worker(self, label: str, total: int | None, completed: int) -> None:
        pass

    def advance(self, label: str, sequences: int, tokens: int) -> None:
        pass


class LoggingReporter:
    """No progress; notices as warnings of the ``virnucpro`` logger."""

    logger = logging.getLogger("virnucpro")

    @contextlib.contextmanager
    def progress(self, total: int, completed: int) -> Iterator[Progress]:
        yield NoProgress()

    def say(self, line: str) -> None:
        self.logger.warning(line)


def never() -> bool:
    return False
