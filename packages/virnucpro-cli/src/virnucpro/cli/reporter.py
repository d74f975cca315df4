"""The engine's reporter on a terminal: rich bars (or plain lines) on stderr, notices as
``virnucpro: ...`` lines that stay visible above the bars."""

from __future__ import annotations

import os

from rich.console import Console

from virnucpro.cli.progress import PLAIN_INTERVAL_S, ProgressDisplay, create_progress

INTERVAL_VAR = "VIRNUCPRO_PROGRESS_INTERVAL"
"""Seconds between plain progress lines (logs, batch schedulers); 5 by default."""


class CliReporter:
    def __init__(self, console: Console) -> None:
        self.console = console

    def progress(self, total: int, completed: int) -> ProgressDisplay:
        interval = float(os.environ.get(INTERVAL_VAR, "") or PLAIN_INTERVAL_S)
        return create_progress(self.console, total, completed, interval=interval)

    def say(self, line: str) -> None:
        self.console.print(f"virnucpro: {line}", markup=False, highlight=False, soft_wrap=True)
