"""Eight devices simulated with CPU worker processes: does the parent (the queue
manager's feed, progress, the merge) serialise the run as workers are added? As JSON.

    python3 benchmarks/sim_node_cpu.py --processes 1 2 8 --out benchmarks/results/sim_node_cpu.json

Each configuration runs the real `virnucpro run --processes N` (the code path of
`--gpus all` with CPU workers) on the same generated proteins with the tiny 8M model,
in a subprocess, and reads from /proc, every 50 ms, the parent's own CPU time (user +
system, its children excluded). It reports the wall time, the parent's CPU seconds and
their share of the wall time, and the tail from the last progress line to exit (the
merge, its verification and the process's end). With one process the work runs in the
parent itself (no queue), so its CPU time is the whole run's.

What this can tell: how much of one core the parent needs to feed N workers and merge
their checkpoints, and whether that grows with N. What it cannot: throughput scaling (on
a 2-core machine N CPU workers share the same cores), GPU-side effects (compile per
worker, PCIe, NCCL), or the merge of 160M tokens (it scales with the rows, measured at
small size here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

AMINO_ACIDS = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)
TICKS = os.sysconf("SC_CLK_TCK")


def write_proteins(path: Path, count: int) -> None:
    rng = np.random.default_rng(3)
    with path.open("w") as out:
        for number in range(count):
            residues = AMINO_ACIDS[rng.integers(0, 20, size=int(rng.integers(20, 60)))]
            out.write(f">s{number:06d}\n{residues.tobytes().decode()}\n")


def own_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(inputs: Path, work: Path, processes: int) -> dict:
    run_dir = work / f"run_{processes}"
    args = [sys.executable, "-m", "virnucpro.cli", "run", str(inputs), "-o", str(run_dir)]
    args += ["--model", "esm2_t6_8M_UR50D", "--random-weights", "--token-budget", "512"]
    args += ["--device", "cpu", "--workers", "0", "--processes", str(processes), "--force"]
    env = {**os.environ, "VIRNUCPRO_PROGRESS_INTERVAL": "0.5"}
    started = time.perf_counter()
    process = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    cpu = [0.0]
    lines: list[tuple[float, str]] = []

    def sample() -> None:
        while process.poll() is None:
            seen = own_cpu_seconds(process.pid)
            if seen is not None:
                cpu[0] = seen
            time.sleep(0.05)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append((time.perf_counter() - started, line.rstrip()))

    threads = [threading.Thread(target=sample), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    process.communicate()
    wall = time.perf_counter() - started
    for thread in threads:
        thread.join()
    if process.returncode != 0:
        raise SystemExit("\n".join(line for _, line in lines))
    progress = [t for t, line in lines if line.startswith("progress: ")]
    return {
        "processes": processes,
        "wall_s": round(wall, 2),
        "parent_cpu_s": round(cpu[0], 2),
        "parent_cpu_share_of_wall": round(cpu[0] / wall, 3),
        "tail_after_last_progress_s": round(wall - progress[-1], 2) if progress else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--proteins", type=int, default=3000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        inputs = work / "proteins.fasta"
        write_proteins(inputs, args.proteins)
        report = {
            "machine": f"{os.cpu_count()} CPU cores",
            "command": " ".join(sys.argv),
            "proteins": args.proteins,
            "runs": [run(inputs, work, n) for n in args.processes],
        }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
