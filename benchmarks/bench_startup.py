"""Seconds from `virnucpro run` to its first batch, for two installs side by side.

Each install is a folder put first on PYTHONPATH (`--install NAME=DIR`, e.g. this
checkout's wheels and a baseline's, both installed with `pip install --target`); the
runs alternate between them, so machine drift and cache state fall on both alike. A run
is stopped with SIGINT once its first batch is done (`--whole` lets it finish), so a
10M-read input measures the start without its hours of GPU work.

    python3 benchmarks/bench_startup.py --install new=/tmp/site --install old=/tmp/site_old \\
        --input reads_10M.fasta --input-type dna --repeats 2 --out startup.json

Per install and input: `first_batch_s` (start to the first progress line with work
done), `ready_s` (start to the first progress line: set-up over), each repeat and their
median. Warm the compile cache with one run first: a cold compile is not start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_run(site: Path, args: argparse.Namespace, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start, not a --force over a run
    command = [sys.executable, "-m", "virnucpro.cli", "run", str(args.input), "-o", str(run_dir)]
    command += ["--model", args.model, "--random-weights", "--force"]
    command += ["--input-type", args.input_type, *args.extra]
    env = {**os.environ, "PYTHONPATH": str(site), "VIRNUCPRO_PROGRESS_INTERVAL": "0.5"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    ready = first = None
    log = []
    for line in process.stdout:
        now = time.perf_counter() - started
        log.append(f"{now:8.2f} {line.rstrip()}")
        if line.startswith("progress: "):
            done = int(line.split()[1].split("/")[0].replace(",", ""))
            ready = ready if ready is not None else now
            if done and first is None:
                first = now
                if not args.whole:
                    process.send_signal(signal.SIGINT)
    process.wait()
    wall = time.perf_counter() - started
    if first is None:
        raise SystemExit(f"no batch finished ({process.returncode}):\n" + "\n".join(log))
    return {
        "ready_s": round(ready or 0.0, 2),
        "first_batch_s": round(first, 2),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--input-type", default="protein", choices=("protein", "dna"))
    parser.add_argument("--model", default="esm2_t33_650M_UR50D")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="let each run finish")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_startup"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("extra", nargs="*", help="more `virnucpro run` options, after --")
    args = parser.parse_args()
    installs = dict(item.split("=", 1) for item in args.install)
    runs: dict[str, list[dict]] = {name: [] for name in installs}
    for repeat in range(args.repeats):
        for name, site in installs.items():
            result = one_run(Path(site), args, args.work / f"run_{name}")
            print(f"[bench_startup] {name} #{repeat}: {result}", file=sys.stderr, flush=True)
            runs[name].append(result)
    report = {
        "benchmark": "startup",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "input": str(args.input),
        "input_type": args.input_type,
        "model": args.model,
        "installs": installs,
        "results": {
            name: {
                "first_batch_s": statistics.median(r["first_batch_s"] for r in found),
                "ready_s": statistics.median(r["ready_s"] for r in found),
                "runs": found,
            }
            for name, found in runs.items()
        },
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
