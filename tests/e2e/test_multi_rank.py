"""Several devices through the queue manager (CPU worker processes here: the same code
path as one process per GPU) and several ranks through torchrun (gloo): the merged
``embeddings.h5`` equals a single-process run row for row, exactly, also after a worker
or a rank is SIGKILLed and the run resumed with another number of ranks.

Exact equality holds because on the CPU a sequence's embedding does not depend on
which batch it shares (see test_kill_resume.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SMALL = ["--max-length", "80", "--checkpoint-every", "2", "--workers", "0", "--device", "cpu"]
KEEP = "--keep-checkpoints"
"""Where a test looks at rank directories after the run: by default they go once the
output is verified."""


@pytest.fixture(scope="module")
def many_proteins(tmp_path_factory):
    """60 proteins of 20-90 residues: enough batches that every worker gets units and a
    kill lands mid-run."""
    rng = np.random.default_rng(11)
    amino = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    path = tmp_path_factory.mktemp("multi") / "proteins.fasta"
    residues = [amino[rng.integers(0, 20, int(rng.integers(20, 90)))] for _ in range(60)]
    path.write_text(
        "".join(f">multi_{n:03d}\n{r.tobytes().decode()}\n" for n, r in enumerate(residues))
    )
    return path


@pytest.fixture(scope="module")
def single(virnucpro, many_proteins, tmp_path_factory, fast_args, read_output):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    result = virnucpro(["run", many_proteins, "-o", run_dir, *fast_args, *SMALL])
    assert result.returncode == 0, result.stderr
    return read_output(run_dir / "embeddings.h5")


def assert_same(expected: dict, got: dict) -> None:
    assert list(got["ids"]) == list(expected["ids"])
    for name in ("embeddings", "lengths", "truncated"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def checkpoints(run_dir: Path, rank: int | None = None) -> list[Path]:
    pattern = f"rank_{rank}/*.h5" if rank is not None else "rank_*/*.h5"
    return sorted((run_dir / "checkpoints").glob(pattern))


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def torchrun(nproc: int, args: list) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "virnucpro.cli",
        *map(str, args),
    ]


def test_worker_processes_equal_one_process(
    virnucpro, many_proteins, tmp_path, fast_args, read_output, single
):
    run_dir = tmp_path / "run"
    result = virnucpro(
        ["run", many_proteins, "-o", run_dir, *fast_args, *SMALL, "--processes", "2", KEEP]
    )
    assert result.returncode == 0, result.stderr
    assert_same(single, read_output(run_dir / "embeddings.h5"))
    # Both workers took units, each into its own rank directory.
    assert checkpoints(run_dir, 0) and checkpoints(run_dir, 1)
    assert "| cpu0 " in result.stderr and " cpu1 " in result.stderr


def test_killed_worker_is_respawned_and_output_unchanged(
    virnucpro, many_proteins, tmp_path, fast_args, read_output, single
):
    run_dir = tmp_path / "run"
    running = virnucpro.start(
        ["run", many_proteins, "-o", run_dir, *fast_args, *SMALL, "--processes", "2"]
    )
    parent = running.process
    assert wait_until(lambda: len(checkpoints(run_dir, 1)) >= 1, parent), "worker 1 never wrote"
    workers = [pid for pid in children(parent.pid) if "spawn_main" in cmdline(pid)]
    assert len(workers) == 2, [cmdline(pid) for pid in children(parent.pid)]
    os.kill(workers[1], signal.SIGKILL)
    code, _, stderr = running.finish()
    assert code == 0, stderr
    assert "failed (worker process killed by SIGKILL); respawning it" in stderr
    assert_same(single, read_output(run_dir / "embeddings.h5"))


def test_sigint_to_the_group_stops_every_worker_then_resume(
    virnucpro, many_proteins, tmp_path, fast_args, read_output, single
):
    run_dir = tmp_path / "run"
    running = virnucpro.start(
        ["run", many_proteins, "-o", run_dir, *fast_args, *SMALL, "--processes", "2"],
        new_session=True,
    )
    assert wait_until(lambda: len(checkpoints(run_dir)) >= 2, running.process)
    os.killpg(running.process.pid, signal.SIGINT)
    code, _, stderr = running.finish()
    assert code in (0, 130), stderr
    if code == 130:
        assert "continue with: virnucpro resume" in stderr
        assert "respawning" not in stderr
        done = sum(1 for _ in checkpoints(run_dir))
        assert done >= 2
        result = virnucpro(
            ["resume", run_dir, "--device", "cpu", "--workers", "0", "--processes", "2"]
        )
        assert result.returncode == 0, result.stderr
    assert_same(single, read_output(run_dir / "embeddings.h5"))


@pytest.mark.parametrize("ranks", [2, 3])
def test_torchrun_ranks_equal_one_process(
    cli_env, many_proteins, tmp_path, fast_args, read_output, single, ranks
):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        torchrun(ranks, ["run", many_proteins, "-o", run_dir, *fast_args, *SMALL, KEEP]),
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done: 60 sequences") == 1  # rank 0 alone reports
    assert [int(p.name.split("_")[1]) for p in sorted((run_dir / "checkpoints").iterdir())] == list(
        range(ranks)
    )
    assert_same(single, read_output(run_dir / "embeddings.h5"))


@pytest.mark.parametrize(("first", "then"), [(3, 2), (2, 1)])
def test_killed_rank_stops_torchrun_and_resume_with_other_rank_count(
    cli_env, virnucpro, many_proteins, tmp_path, fast_args, read_output, single, first, then
):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        torchrun(first, ["run", many_proteins, "-o", run_dir, *fast_args, *SMALL]),
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = first - 1
    assert wait_until(lambda: len(checkpoints(run_dir, victim)) >= 1, launcher)
    ranks = [pid for pid in _descendants(launcher.pid) if "virnucpro.cli" in cmdline(pid)]
    target = next(pid for pid in ranks if _environ(pid).get("RANK") == str(victim))
    os.kill(target, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0, stderr
    assert not (run_dir / "embeddings.h5").exists()
    left_behind = len(checkpoints(run_dir))
    assert left_behind >= 1
    if then == 1:
        result = virnucpro(["resume", run_dir, "--device", "cpu", "--workers", "0"])
    else:
        result = subprocess.run(
            torchrun(then, ["resume", run_dir, "--device", "cpu", "--workers", "0"]),
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert result.returncode == 0, result.stderr
    assert "before resuming" in result.stdout
    assert_same(single, read_output(run_dir / "embeddings.h5"))


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if b"=" in item)
    return {key: value for key, _, value in pairs}
