"""Where the seconds before the first batch (and after the last) go: `virnucpro run`
under py-spy, summarised per second of each process's main thread as JSON.

    python3 benchmarks/profile_startup.py --out-dir prof proteins.fasta -- \\
        --model esm2_t33_650M_UR50D --random-weights

Needs `py-spy` on the PATH (a wheel: `pip install py-spy`). Writes the raw speedscope
profile and the run's time-stamped log to `--out-dir`; prints, for every main thread
that ran at least a second, one line per second: the innermost virnucpro function on
the stack and the module being imported or the torch function below it (imports show as
the module's file). Run it twice: the first run of a model compiles cold, the second
finds the kernels in inductor's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

LIBRARIES = ("_inductor", "_dynamo", "_functorch", "h5py", "esm/", "numpy", "torch/")


def record(fasta: Path, out_dir: Path, run_args: list[str]) -> Path:
    profile = out_dir / "startup.speedscope.json"
    command = ["py-spy", "record", "-r", "50", "--idle", "-f", "speedscope"]
    command += ["-o", str(profile), "--subprocesses", "--", sys.executable, "-m", "virnucpro.cli"]
    command += ["run", str(fasta), "-o", str(out_dir / "run"), "--force", *run_args]
    env = {**os.environ, "VIRNUCPRO_PROGRESS_INTERVAL": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with (out_dir / "run.log").open("w") as log:
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stderr is not None
        for line in process.stderr:
            log.write(f"{time.perf_counter() - started:8.2f} {line}")
    if process.wait() != 0:
        raise SystemExit(f"the profiled run failed: see {out_dir / 'run.log'}")
    return profile


def describe(frames: list[dict]) -> str:
    ours = [f["name"] for f in frames if "virnucpro" in (f.get("file") or "")]
    imported = [f.get("file") or "" for f in frames if f["name"] == "<module>"]
    below = "-"
    if len(imported) > 1:
        below = "import " + imported[-1].split("site-packages/")[-1]
    else:
        for frame in reversed(frames):
            where = frame.get("file") or ""
            library = next((name for name in LIBRARIES if name in where), None)
            if library is not None:
                below = f"{library.strip('/')}.{frame['name']}"
                break
    return f"{ours[-1] if ours else '-'} | {below}"


def summarise(profile: Path) -> dict[str, list[str]]:
    data = json.loads(profile.read_text())
    frames = data["shared"]["frames"]
    timelines = {}
    for thread in data["profiles"]:
        name = thread["name"]
        words = name.split()  # 'Process <pid> Thread <tid> "<name>"'
        if sum(thread["weights"]) < 1.0 or words[1] != words[3]:
            continue
        seconds: defaultdict[int, Counter[str]] = defaultdict(Counter)
        elapsed = 0.0
        for sample, weight in zip(thread["samples"], thread["weights"], strict=True):
            seconds[int(elapsed)][describe([frames[i] for i in sample])] += weight
            elapsed += weight
        timelines[name] = [
            f"{second:4d}s {seconds[second].most_common(1)[0][0]}" for second in sorted(seconds)
        ]
    return timelines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fasta", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="after --: `run` options")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    profile = record(args.fasta, args.out_dir, run_args)
    print(json.dumps({"profile": str(profile), "main_threads": summarise(profile)}, indent=1))


if __name__ == "__main__":
    main()
