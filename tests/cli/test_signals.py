"""Real signals to a real ``virnucpro`` process whose batch loop uses GracefulStop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture
def start_loop(child_env, demo_plugin):
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "virnucpro.cli", "demo-loop", *args],
            env=child_env([demo_plugin]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline() == "batch 1\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_first_signal_stops_at_batch_boundary(start_loop, signum, code, name):
    process = start_loop()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code
    lines = ["batch 1", *stdout.splitlines()]
    batches = len(lines) - 1
    assert lines == [
        *(f"batch {n}" for n in range(1, batches + 1)),
        f"checkpointed {batches} batches",
    ]
    assert stderr.strip().splitlines() == [
        f"{name}: stopping at the next batch boundary and checkpointing; "
        "send it again to exit at once",
        f"virnucpro: stopped by {name}; finished work is checkpointed; "
        "continue with: virnucpro resume runs/demo",
    ]


def test_second_signal_exits_at_once(start_loop):
    process = start_loop("--slow")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None, "the first signal must wait for the batch boundary"
    process.send_signal(signal.SIGTERM)
    # The batch sleeps 60 s: ending within the 30 s timeout means it did not wait for it.
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 143
    assert stdout == ""
    assert stderr.strip().splitlines()[-1] == (
        "SIGTERM again: exiting now; checkpoints already written stay valid"
    )


def test_handlers_are_restored(child_env):
    code = (
        "import signal\n"
        "from virnucpro.cli.signals import GracefulStop\n"
        "before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)\n"
        "with GracefulStop():\n"
        "    assert signal.getsignal(signal.SIGTERM) is not before[0]\n"
        "assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=60)
    assert result.returncode == 0
