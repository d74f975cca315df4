"""`inspect-checkpoint --json` in each state, and `resume` progress starting at what is done.

The interrupt is a Ctrl-C as a terminal sends it: SIGINT to the whole process group, so
the DataLoader worker gets it too and must ignore it (the main process stops cleanly at
a batch boundary, exit 130).
"""

from __future__ import annotations

import json
import os
import signal
import time

import h5py


def inspect(virnucpro, run_dir, *extra) -> dict:
    result = virnucpro(["inspect-checkpoint", run_dir, "--json", *extra])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rows_on_disk(run_dir) -> int:
    total = 0
    for path in sorted((run_dir / "checkpoints").glob("rank_*/*.h5")):
        with h5py.File(path, "r") as f:
            total += f["indices"].shape[0]
    return total


def wait_for_checkpoint(run_dir, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list((run_dir / "checkpoints").glob("rank_*/*.h5")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def test_states_counts_and_resume_progress(virnucpro, proteins, tmp_path, fast_args):
    run_dir = tmp_path / "run"
    args = ["run", proteins, "-o", run_dir, *fast_args, "--checkpoint-every", "3"]
    running = virnucpro.start([*args, "--workers", "1"], new_session=True)
    assert running.wait_for_line("progress:")
    during = inspect(virnucpro, run_dir)
    assert during["state"] == "running" and during["total_sequences"] == 30
    wait_for_checkpoint(run_dir, running.process)
    os.killpg(running.process.pid, signal.SIGINT)
    code, _, stderr = running.finish()
    assert code == 130, stderr
    assert stderr.splitlines()[-1] == (
        "virnucpro: stopped by SIGINT; finished work is checkpointed; "
        f"continue with: virnucpro resume {run_dir}"
    )

    stopped = inspect(virnucpro, run_dir, "--verify")
    done = rows_on_disk(run_dir)
    assert stopped["state"] == "interrupted" and stopped["verified"]
    assert 0 < done < 30
    assert stopped["completed_sequences"] == done
    assert sum(c["sequences"] for c in stopped["checkpoints"]) == done
    assert all(c["valid"] and c["rank"] == 0 for c in stopped["checkpoints"])

    resumed = virnucpro(["resume", run_dir, "--workers", "0"])
    assert resumed.returncode == 0, resumed.stderr
    progress = [line for line in resumed.stderr.splitlines() if line.startswith("progress:")]
    assert progress[0].startswith(f"progress: {done}/30 sequences")
    assert progress[-1].startswith("progress: 30/30 sequences")
    assert f"done: 30 sequences ({30 - done} now, {done} before resuming)" in resumed.stdout

    # The verified output holds every row; the checkpoints are gone (the data is on disk
    # once). inspect-checkpoint's view of such a run: tests/cli/test_commands.py.
    assert not (run_dir / "checkpoints").exists()

    again = virnucpro(["resume", run_dir])
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already complete: 30 sequences")
