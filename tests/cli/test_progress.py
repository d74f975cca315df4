"""Progress after resume starts at the completed count; speed counts only new work;
without a terminal, plain lines every few seconds."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import pytest
from rich.console import Console

from virnucpro.cli.progress import (
    TOTAL,
    Meter,
    PlainProgress,
    RichProgress,
    create_progress,
)


class FakeClock:
    """Seconds that a test sets by hand (rates must not depend on the machine's speed)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rich_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_meter_rate_excludes_resumed_work():
    meter = Meter(total=1000, initial=400, started=0.0)
    meter.advance(100, 25_000)
    assert (meter.completed, meter.new_sequences) == (500, 100)
    assert meter.sequences_per_s(10.0) == 10.0
    assert meter.tokens_per_s(10.0) == 2500.0
    assert meter.remaining_s(10.0) == 50.0
    assert Meter(total=1000, initial=400, started=0.0).remaining_s(10.0) is None


def test_rich_bars_start_at_completed_count_after_resume():
    clock = FakeClock()
    display = RichProgress(rich_console(), total=1000, completed=400, clock=clock)
    display.add_worker("gpu2", total=500, completed=300)
    display.add_worker("gpu3", total=500, completed=100)
    tasks = {task.description: task for task in display.bars.tasks}
    assert (tasks[TOTAL].completed, tasks[TOTAL].total) == (400, 1000)
    assert (tasks["gpu2"].completed, tasks["gpu3"].completed) == (300, 100)

    clock.now += 20.0
    display.advance("gpu2", 60, 6000)
    display.advance("gpu3", 40, 4000)
    display.close()
    assert (tasks[TOTAL].completed, tasks["gpu2"].completed, tasks["gpu3"].completed) == (
        500,
        360,
        140,
    )
    total = display.total
    assert total.sequences_per_s(clock.now) == 5.0
    assert total.tokens_per_s(clock.now) == 500.0
    assert total.remaining_s(clock.now) == 100.0
    assert display.meters["gpu2"].sequences_per_s(clock.now) == 3.0


def test_rich_rendering_shows_counts_rate_and_eta():
    clock = FakeClock()
    console = rich_console()
    display = RichProgress(console, total=1000, completed=400, clock=clock)
    display.add_worker("gpu0", total=1000, completed=400)
    clock.now += 10.0
    display.advance("gpu0", 100, 12_000)
    display.bars.refresh()
    display.close()
    text = console.file.getvalue()
    assert "500/1,000" in text
    assert "1.2k tok/s" in text
    assert "0:00:10" in text
    assert "eta 0:00:50" in text


def test_plain_progress_prints_every_interval():
    clock = FakeClock()
    out = io.StringIO()
    console = Console(file=out, width=80)
    display = create_progress(console, total=1000, completed=400, clock=clock, interval=5.0)
    assert isinstance(display, PlainProgress)
    display.add_worker("gpu0", total=1000, completed=400)
    for _ in range(9):
        clock.now += 1.0
        display.advance("gpu0", 10, 1000)
    display.close()
    assert out.getvalue().splitlines() == [
        "progress: 400/1,000 sequences (40.0%), 0 tok/s, elapsed 0:00:00, remaining -:--:--",
        "progress: 450/1,000 sequences (45.0%), 1.0k tok/s, elapsed 0:00:05, "
        "remaining 0:00:55 | gpu0 450/1,000",
        "progress: 490/1,000 sequences (49.0%), 1.0k tok/s, elapsed 0:00:09, "
        "remaining 0:00:51 | gpu0 490/1,000",
    ]


def test_plain_progress_does_not_repeat_the_last_line_on_close():
    clock = FakeClock()
    out = io.StringIO()
    display = create_progress(Console(file=out, width=80), total=20, clock=clock, interval=5.0)
    display.add_worker("cpu", total=20)
    clock.now += 6.0
    display.advance("cpu", 20, 2000)
    display.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "progress: 0/20 sequences (0.0%)",
        "progress: 20/20 sequences (100.0%)",
    ]


def test_terminal_gets_rich_bars():
    assert isinstance(create_progress(rich_console(), total=10), RichProgress)


DEMO = """
import time
from rich.console import Console
from virnucpro.cli.progress import create_progress

display = create_progress(Console(stderr=True), total=60, completed=20, interval=0.2)
display.add_worker("gpu0", total=60, completed=20)
for _ in range(8):
    time.sleep(0.1)
    display.advance("gpu0", 5, 500)
display.close()
"""


def test_without_terminal_subprocess_prints_plain_lines(child_env):
    env = child_env(extra={"TERM": "xterm"})
    env.pop("FORCE_COLOR", None)
    result = subprocess.run(
        [sys.executable, "-c", DEMO], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("progress: 20/60 sequences (33.3%)")
    assert lines[-1].startswith("progress: 60/60 sequences (100.0%)")
    assert 3 <= len(lines) <= 8
    assert all(line.startswith("progress: ") for line in lines)
    assert "\x1b" not in result.stderr


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")
def test_terminal_subprocess_draws_bars(child_env):
    leader, follower = pty.openpty()
    env = child_env(extra={"TERM": "xterm", "COLUMNS": "120"})
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-c", DEMO], env=env, stderr=follower, stdout=subprocess.DEVNULL
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen
    assert "━" in screen
    assert "60/60" in screen
    assert "progress: " not in screen
