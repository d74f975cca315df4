"""A stopped worker or rank is noticed: a --processes worker that makes no progress is
killed and its unit re-queued (the run finishes, every row once, in order); a stalled
torchrun rank ends the job within the stall timeout, naming the rank, and resume
finishes it."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
multi = importlib.import_module("test_multi_rank")

STALL = ["--stall-timeout", "6"]
SLOW = ["--max-length", "80", "--checkpoint-every", "1", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def proteins(tmp_path_factory):
    rng = np.random.default_rng(5)
    amino = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    path = tmp_path_factory.mktemp("stall") / "proteins.fasta"
    residues = [amino[rng.integers(0, 20, int(rng.integers(40, 80)))] for _ in range(80)]
    path.write_text(
        "".join(f">st_{n:03d}\n{r.tobytes().decode()}\n" for n, r in enumerate(residues))
    )
    return path


def _stop_one(pids: list[int]) -> int:
    os.kill(pids[-1], signal.SIGSTOP)
    return pids[-1]


def test_a_stopped_worker_is_killed_and_its_unit_requeued(
    cli_env, proteins, tmp_path, fast_args, read_output
):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "virnucpro.cli", "run", proteins, "-o", run_dir, *fast_args,
         *SLOW, *STALL, "--processes", "2"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert multi.wait_until(lambda: len(multi.checkpoints(run_dir, 1)) >= 1, process)
    workers = [p for p in multi._descendants(process.pid) if "multiprocessing" in multi.cmdline(p)]
    stopped = _stop_one(sorted(workers))
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        if Path(f"/proc/{stopped}").exists():
            os.kill(stopped, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "made no progress" in stderr
    out = read_output(run_dir / "embeddings.h5")
    assert list(out["ids"]) == [f"st_{n:03d}" for n in range(80)]


def test_a_stalled_torchrun_rank_ends_the_job_naming_it(
    cli_env, virnucpro, proteins, tmp_path, fast_args, read_output
):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        multi.torchrun(2, ["run", proteins, "-o", run_dir, *fast_args, *SLOW, *STALL]),
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert multi.wait_until(lambda: len(multi.checkpoints(run_dir, 1)) >= 1, launcher)
    ranks = [p for p in multi._descendants(launcher.pid) if "virnucpro.cli" in multi.cmdline(p)]
    victim = next(pid for pid in ranks if multi._environ(pid).get("RANK") == "1")
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if Path(f"/proc/{victim}").exists():
            os.kill(victim, signal.SIGKILL)
    assert launcher.returncode != 0
    assert "rank 1 made no progress" in stderr
    assert time.monotonic() - stopped_at < 60
    result = virnucpro(["resume", run_dir, "--device", "cpu", "--workers", "0"])
    assert result.returncode == 0, result.stderr
    out = read_output(run_dir / "embeddings.h5")
    assert list(out["ids"]) == [f"st_{n:03d}" for n in range(80)]
