"""What a person sees while a run works: one bar per GPU plus the total.

After ``resume`` every bar starts at what is already done, and speed and remaining
time count only the work of this session (a resumed run would otherwise report the
speed of the whole earlier run as if done in a moment). Without a terminal, a plain
line every few seconds replaces the bars. The pipeline reports through
:class:`ProgressDisplay`: ``add_worker`` once per GPU, ``advance`` per batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

Clock = Callable[[], float]
TOTAL = "total"
PLAIN_INTERVAL_S = 5.0


@dataclass
class Meter:
    """Counts for one bar; rates and remaining time use only work done since ``started``."""

    total: int | None
    initial: int
    started: float
    completed: int = field(init=False)
    new_tokens: int = 0

    def __post_init__(self) -> None:
        self.completed = self.initial

    def advance(self, sequences: int, tokens: int) -> None:
        self.completed += sequences
        self.new_tokens += tokens

    @property
    def new_sequences(self) -> int:
        return self.completed - self.initial

    def elapsed(self, now: float) -> float:
        return max(now - self.started, 0.0)

    def sequences_per_s(self, now: float) -> float:
        elapsed = self.elapsed(now)
        return self.new_sequences / elapsed if elapsed > 0 else 0.0

    def tokens_per_s(self, now: float) -> float:
        elapsed = self.elapsed(now)
        return self.new_tokens / elapsed if elapsed > 0 else 0.0

    def remaining_s(self, now: float) -> float | None:
        """Seconds left at this session's speed; None before any new work or without total."""
        rate = self.sequences_per_s(now)
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.completed, 0) / rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_rate(per_s: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= limit:
            return f"{per_s / limit:.1f}{suffix}"
    return f"{per_s:.0f}"


def format_count(meter: Meter) -> str:
    if meter.total is None:
        return f"{meter.completed:,}"
    return f"{meter.completed:,}/{meter.total:,}"


class ProgressDisplay:
    """Thread-safe counters behind every display; subclasses decide how they are shown."""

    def __init__(self, total: int, completed: int = 0, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.meters: dict[str, Meter] = {TOTAL: Meter(total, completed, clock())}

    @property
    def total(self) -> Meter:
        return self.meters[TOTAL]

    def add_worker(self, key: str, total: int | None = None, completed: int = 0) -> None:
        """One bar per GPU (``key`` such as ``gpu2``), starting at what it already did."""
        with self._lock:
            if key in self.meters:
                raise ValueError(f"progress already has a bar named {key!r}")
            self.meters[key] = Meter(total, completed, self._clock())
            self._added(key)

    def advance(self, key: str, sequences: int, tokens: int) -> None:
        """Count a finished batch of ``key``; the total bar advances with it."""
        with self._lock:
            self.meters[key].advance(sequences, tokens)
            self.total.advance(sequences, tokens)
            self._advanced(key)

    def close(self) -> None:
        with self._lock:
            self._closed()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _added(self, key: str) -> None:
        """Hook for subclasses; called with the lock held."""

    def _advanced(self, key: str) -> None:
        """Hook for subclasses; called with the lock held."""

    def _closed(self) -> None:
        """Hook for subclasses; called with the lock held."""


class _MeterColumn(ProgressColumn):
    """A column that renders from the task's :class:`Meter`."""

    def __init__(self, render: Callable[[Meter, float], str], clock: Clock) -> None:
        super().__init__()
        self._render_meter = render
        self._clock = clock

    def render(self, task: Task) -> Text:
        return Text(self._render_meter(task.fields["meter"], self._clock()))


class RichProgress(ProgressDisplay):
    """rich bars: sequences done of total, tokens/s, elapsed and remaining time."""

    def __init__(
        self,
        console: Console,
        total: int,
        completed: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(total, completed, clock)
        self.bars = Progress(
            TextColumn("{task.description:>6}"),
            BarColumn(),
            _MeterColumn(lambda m, now: format_count(m), clock),
            _MeterColumn(lambda m, now: f"{format_rate(m.tokens_per_s(now))} tok/s", clock),
            _MeterColumn(lambda m, now: format_duration(m.elapsed(now)), clock),
            _MeterColumn(lambda m, now: f"eta {format_duration(m.remaining_s(now))}", clock),
            console=console,
            transient=False,
        )
        self._task_ids = {TOTAL: self._add_task(TOTAL)}
        self.bars.start()

    def _add_task(self, key: str) -> TaskID:
        meter = self.meters[key]
        return self.bars.add_task(key, total=meter.total, completed=meter.completed, meter=meter)

    def _added(self, key: str) -> None:
        self._task_ids[key] = self._add_task(key)

    def _advanced(self, key: str) -> None:
        for name in (key, TOTAL):
            self.bars.update(self._task_ids[name], completed=self.meters[name].completed)

    def _closed(self) -> None:
        self.bars.stop()


class PlainProgress(ProgressDisplay):
    """One line every ``interval`` seconds, for logs and batch schedulers."""

    def __init__(
        self,
        console: Console,
        total: int,
        completed: int = 0,
        clock: Clock = time.monotonic,
        interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        super().__init__(total, completed, clock)
        self._console = console
        self._interval = interval
        self._last_line = clock()
        self._print_line()

    def line(self) -> str:
        now = self._clock()
        total = self.total
        share = f" ({100.0 * total.completed / total.total:.1f}%)" if total.total else ""
        workers = " ".join(
            f"{key} {format_count(meter)}" for key, meter in self.meters.items() if key != TOTAL
        )
        return (
            f"progress: {format_count(total)} sequences{share}, "
            f"{format_rate(total.tokens_per_s(now))} tok/s, "
            f"elapsed {format_duration(total.elapsed(now))}, "
            f"remaining {format_duration(total.remaining_s(now))}"
            + (f" | {workers}" if workers else "")
        )

    def _print_line(self) -> None:
        self._console.print(self.line(), markup=False, highlight=False, soft_wrap=True)
        self._last_line = self._clock()
        self._printed = self.total.completed

    def _advanced(self, key: str) -> None:
        if self._clock() - self._last_line >= self._interval:
            self._print_line()

    def _closed(self) -> None:
        """The final count, unless the last line already showed it."""
        if self.total.completed != self._printed:
            self._print_line()


def create_progress(
    console: Console,
    total: int,
    completed: int = 0,
    clock: Clock = time.monotonic,
    interval: float = PLAIN_INTERVAL_S,
) -> ProgressDisplay:
    """Bars on a terminal, plain lines every ``interval`` seconds otherwise."""
    if console.is_terminal:
        return RichProgress(console, total, completed, clock)
    return PlainProgress(console, total, completed, clock, interval)
