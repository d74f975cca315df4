"""What the output assembly takes from the lead's main thread while a run computes.

    python3 benchmarks/bench_assembly_gil.py --rows 200000 --width 1280 --spacing 1.0

On one GPU the lead's main thread drives the GPU: Python that launches kernels, holding
the GIL between the calls that let it go. The assembly (`OutputAssembly`, started by the
HDF5 writer on the lead) runs beside it on a thread: per checkpoint it checks the file,
reads its rows and writes them into the output. Here the main thread spins a Python
loop (the stand-in for the launches) while the real checkpoint writer lands checkpoints
``--spacing`` seconds apart, without and with an assembly polling, alternating
``--repeats`` times, under two loops: `gil-bound` (it holds the GIL but for the
interpreter's forced switches every 5 ms) and `releasing` (it lets the GIL go once per
iteration, as a kernel launch or a torch call does). Reported per loop:
`assembled_share`, the rows the assembly had written two polls after the last
checkpoint (the rest is the merge's to write after the last batch), and the loop's lost
iterations as main-thread milliseconds per checkpoint, an upper bound on what the GPU
loop loses (on a host with few cores the threads also compete for the cores). Prints
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench_merge import manifest_for, write_checkpoints

from virnucpro.ckpt import OutputAssembly, write_manifest
from virnucpro.ckpt.assembly import POLL_S


def spin_while(busy: threading.Thread, tail: float, releasing: bool) -> tuple[int, float]:
    """Iterations of a small Python loop until ``tail`` seconds after ``busy`` ends, and
    the seconds taken. ``releasing``: each iteration also lets the GIL go once, as a
    kernel launch or a torch call does; else the loop holds it but for the
    interpreter's forced switches."""
    started = time.perf_counter()
    iterations = 0
    state: dict[int, int] = {}
    ends = float("inf")
    while time.perf_counter() < ends:
        for step in range(1000):
            state[step & 63] = step
        if releasing:
            time.sleep(0)
        iterations += 1
        if ends == float("inf") and not busy.is_alive():
            ends = time.perf_counter() + tail
    return iterations, time.perf_counter() - started


def one_run(work: Path, args: argparse.Namespace, assembled: bool, releasing: bool) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work))
    manifest = manifest_for(args.rows, args.width)
    write_manifest(run_dir, manifest)
    assembly = OutputAssembly(run_dir, manifest) if assembled else None
    if assembly is not None:
        assembly.start()
    writer = threading.Thread(
        target=write_checkpoints,
        args=(run_dir, args.rows, args.width, args.checkpoints, args.spacing),
    )
    writer.start()
    # Two polls after the last checkpoint: the assembly has taken every one.
    iterations, seconds = spin_while(writer, 2 * POLL_S, releasing)
    writer.join()
    rows_assembled = 0
    if assembly is not None:
        assembly.stop()
        rows_assembled = int((assembly.owner >= 0).sum())
        assembly.discard()
    shutil.rmtree(run_dir)
    return {
        "loop": "releasing" if releasing else "gil-bound",
        "assembled": assembled,
        "seconds": round(seconds, 3),
        "loop_iterations_per_s": round(iterations / seconds, 1),
        "rows_assembled": rows_assembled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="folder for the runs (temporary)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for _ in range(args.repeats):
            for releasing in (False, True):
                for assembled in (False, True):
                    runs.append(one_run(Path(scratch), args, assembled, releasing))
    report = {
        "benchmark": "assembly_gil",
        "command": "python3 benchmarks/bench_assembly_gil.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("rows", args.rows),
                ("width", args.width),
                ("checkpoints", args.checkpoints),
                ("spacing", args.spacing),
                ("repeats", args.repeats),
            )
        ),
        "cores": os.cpu_count(),
        "checkpoint_mb": round(args.rows * args.width * 4 / args.checkpoints / 1e6, 1),
        "runs": runs,
    }
    for loop in ("gil-bound", "releasing"):
        report[loop] = summary([r for r in runs if r["loop"] == loop], args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def summary(runs: list[dict], args: argparse.Namespace) -> dict:
    """Medians: the share of rows assembled by the end of the run, the loop's lost share
    and what that is in main-thread milliseconds per checkpoint."""
    plain = statistics.median(r["loop_iterations_per_s"] for r in runs if not r["assembled"])
    assembled = [r for r in runs if r["assembled"]]
    rate = statistics.median(r["loop_iterations_per_s"] for r in assembled)
    seconds = statistics.median(r["seconds"] for r in runs)
    lost = 1 - rate / plain
    return {
        "assembled_share": round(
            statistics.median(r["rows_assembled"] for r in assembled) / args.rows, 3
        ),
        "main_loop_share_lost": round(lost, 4),
        "main_thread_ms_per_checkpoint": round(1000 * lost * seconds / args.checkpoints, 1),
    }


if __name__ == "__main__":
    main()
