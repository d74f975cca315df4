"""The engine's reporter on a terminal: rich bars (or plain lines) on stderr, notices as
``virnucpro: ...`` lines that stay visible above the bars."""

from __future__ import annotations

from rich.console import Console

from virnucpro.cli.progress import ProgressDisplay, create_progress


class CliReporter:
    def __init__(self, console: Console) -> None:
        self.console = console

    def progress(self, total: int, completed: int) -> ProgressDisplay:
        return create_progress(self.console, total, completed)

    def say(self, line: str) -> None:
        self.console.print(f"virnucpro: {line}", markup=False, highlight=False, soft_wrap=True)
