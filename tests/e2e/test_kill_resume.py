"""A real `virnucpro run` killed (SIGKILL) or stopped (SIGTERM) at seeded random moments,
resumed and killed again, ends with the same embeddings.h5 as an uninterrupted run.

Equality is exact, element by element: on one machine the packed forward of a sequence
does not depend on which other sequences share its batch (attention is per sequence on
the CPU, and every other operation works row by row), so a resumed run, whose batches
differ, must reproduce the uninterrupted run's floats bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess

import numpy as np
import pytest

MAX_LENGTH = ["--max-length", "80"]
CHECKPOINTS = ["--checkpoint-every", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def uninterrupted(virnucpro, proteins, tmp_path_factory, fast_args, read_output):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = virnucpro(["run", proteins, "-o", run_dir, *fast_args, *MAX_LENGTH, *CHECKPOINTS])
    assert result.returncode == 0, result.stderr
    return read_output(run_dir / "embeddings.h5")


def interrupt(virnucpro, args, signum: int, delay: float) -> int:
    """Start the command, send ``signum`` ``delay`` s after embedding starts; its exit code."""
    running = virnucpro.start(args)
    if running.wait_for_line("progress:"):
        wait_quietly(running.process, delay)
    if running.process.poll() is None:
        os.kill(running.process.pid, signum)
    code, _, stderr = running.finish()
    # 0 or -signum: the signal came after the work was done (-signum: after the
    # handlers were restored, while the interpreter shut down).
    assert code in (0, -signum, 143 if signum == signal.SIGTERM else 0), stderr
    if code == 143:
        assert "continue with: virnucpro resume" in stderr
    return code


def wait_quietly(process, delay: float) -> None:
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        return


@pytest.mark.parametrize(
    ("signum", "seed"),
    [(signal.SIGKILL, 1), (signal.SIGKILL, 2), (signal.SIGTERM, 3), (signal.SIGTERM, 4)],
)
def test_interrupted_and_resumed_equals_uninterrupted(
    virnucpro, proteins, tmp_path, fast_args, read_output, uninterrupted, signum, seed
):
    moments = random.Random(seed)
    run_dir = tmp_path / "run"
    run = ["run", proteins, "-o", run_dir, *fast_args, *MAX_LENGTH, *CHECKPOINTS]
    interrupt(virnucpro, run, signum, moments.uniform(0.0, 0.4))
    interrupt(virnucpro, ["resume", run_dir, "--workers", "0"], signum, moments.uniform(0.0, 0.3))
    final = virnucpro(["resume", run_dir, "--workers", "0"])
    assert final.returncode == 0, final.stderr
    resumed = read_output(run_dir / "embeddings.h5")
    for key in ("ids", "lengths", "truncated"):
        assert np.array_equal(resumed[key], uninterrupted[key]), key
    np.testing.assert_array_equal(resumed["embeddings"], uninterrupted["embeddings"])
