"""The real thing, timed: `virnucpro run` as users start it, against the bare forward in
the same run, as JSON.

    python3 benchmarks/bench_e2e.py --out benchmarks/results/e2e_h200.json
    python3 benchmarks/bench_e2e.py --quick --device cpu          # smoke run, 8M model

Each run starts `python -m virnucpro.cli run ...` in a subprocess (the same code path as
the `virnucpro` command, compile and merge included) on a generated reads-like set
(60-166 aa: six-frame translations of 300 bp reads) and reads its plain progress lines
(`VIRNUCPRO_PROGRESS_INTERVAL=1`) as they arrive:

- `cli_tokens_per_s`: tokens over the wall clock from start to exit;
- `steady_tokens_per_s`: tokens between the progress lines at 16% and 96%, over the time
  between them;
- `startup_s`: start to the first progress line with work done; `merge_s`: the line at
  100% to the summary (the merge, its check, the checkpoints' removal); `exit_s`: the
  summary to the process's end;
- `peak_host_rss_gb`: the largest resident set of any one of the run's processes
  (getrusage in a launcher that runs only this command, so earlier runs do not count);
- `forward_tokens_per_s`: the packed forward alone in this process (same model, same
  precision, compiled, the run's own plan and token budget), warm-up not timed;
- `min_cos_vs_fp32`: the worst cosine, over `--check` sequences, between the run's
  mean embedding and an fp32 forward of the same weights (per layer in the output).

Reads mode (`set` `dna`): `--reads` random 300 bp reads; `reads_per_s_to_first_batch` is
reads over the time to the first progress line with work done, and
`cli_reads_per_s` reads over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from virnucpro.ckpt import open_embeddings
from virnucpro.data import build_index, pack_residues, plan_batches
from virnucpro.infer import PackedESM2, load_model

AMINO_ACIDS = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
STEADY = (0.16, 0.96)
FORWARD_TOKENS = 4_000_000
"""The bare forward is timed on the first batches of the plan up to this many tokens."""
FULL = {
    "runs": [
        ("esm2_t33_650M_UR50D", "reads", "mean", 23_000_000),
        ("esm2_t33_650M_UR50D", "reads", "per-token", 20_600_000),
        ("esm2_t36_3B_UR50D", "reads", "mean", 5_000_000),
        ("esm2_t33_650M_UR50D", "dna", "mean", 1_000_000),
    ],
    "check": 1000,
}
QUICK = {
    "runs": [
        ("esm2_t6_8M_UR50D", "reads", "mean", 40_000),
        ("esm2_t6_8M_UR50D", "reads", "per-token", 10_000),
        ("esm2_t6_8M_UR50D", "dna", "mean", 2_000),
    ],
    "check": 50,
}


def say(message: str) -> None:
    print(f"[bench_e2e] {message}", file=sys.stderr, flush=True)


def write_proteins(path: Path, tokens: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(60, 167, size=tokens // 60 + 1)
    count = int(np.searchsorted(np.cumsum(lengths + 2), tokens)) + 1
    with path.open("w") as out:
        for number, length in enumerate(lengths[:count].tolist()):
            residues = AMINO_ACIDS[rng.integers(0, 20, size=length)].tobytes().decode()
            out.write(f">p{number:08d}\n{residues}\n")


def write_reads(path: Path, reads: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        for start in range(0, reads, 10_000):
            block = BASES[rng.integers(0, 4, size=(min(10_000, reads - start), 300))]
            out.writelines(
                f">r{start + i:08d}\n{row.tobytes().decode()}\n" for i, row in enumerate(block)
            )


class Timeline:
    """Progress lines of the child as (seconds since start, sequences done, total)."""

    def __init__(self, process: subprocess.Popen, started: float) -> None:
        self.points: list[tuple[float, int, int]] = []
        self.log: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process, started))
        self._thread.start()

    def _read(self, process: subprocess.Popen, started: float) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter() - started
            self.log.append(f"{now:8.2f} {line.rstrip()}")
            if line.startswith("progress: "):
                done, total = line.split()[1].replace(",", "").split("/")
                self.points.append((now, int(done), int(total)))

    def join(self) -> None:
        self._thread.join()


# Runs the command and writes the largest resident set (KiB) among its processes.
LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, Timeline, float]:
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        started = time.perf_counter()
        command = [sys.executable, "-m", "virnucpro.cli", "run", *args]
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, rss.name, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        timeline = Timeline(process, started)
        process.wait()
        wall = time.perf_counter() - started
        timeline.join()
        if process.returncode != 0:
            raise SystemExit(
                f"virnucpro run failed ({process.returncode}):\n" + "\n".join(timeline.log)
            )
        peak_kib = int(Path(rss.name).read_text())
    return wall, timeline, peak_kib / 2**20


def steady(points: list[tuple[float, int, int]], tokens_per_sequence: float) -> float | None:
    if not points:
        return None
    total = points[-1][2]
    inside = [p for p in points if STEADY[0] * total <= p[1] <= STEADY[1] * total]
    if len(inside) < 2:
        return None
    (t0, s0, _), (t1, s1, _) = inside[0], inside[-1]
    return round((s1 - s0) * tokens_per_sequence / (t1 - t0)) if t1 > t0 else None


@torch.inference_mode()
def forward_speed(model_name: str, fasta: Path, budget: int, device: torch.device) -> float:
    """The compiled bf16 packed forward alone over the run's plan (first batches warm up)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(model_name, random_weights=True, seed=0, device=device, dtype=dtype)
    forward = PackedESM2(model.model, compile=device.type == "cuda")
    index = build_index([fasta])
    plan = plan_batches(index.lengths, budget, 1022)
    budget_tokens = np.cumsum([int(index.lengths[b].sum()) + 2 * len(b) for b in plan])
    plan = plan[: int(np.searchsorted(budget_tokens, FORWARD_TOKENS)) + 4]
    batches = [pack_residues(index.read_many(b), index.ids_of(b), b) for b in plan]
    last = model.num_layers

    def go(batch: dict) -> None:
        forward(
            batch["input_ids"].to(device),
            batch["cu_seqlens"].to(device),
            batch["max_seqlen"],
            [last],
        )

    for batch in batches[:3]:
        go(batch)
    sizes = np.cumsum([int(b["input_ids"].numel()) for b in batches[3:]])
    timed = batches[3 : 3 + int(np.searchsorted(sizes, FORWARD_TOKENS)) + 1] or batches
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for batch in timed:
        go(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tokens = sum(int(b["input_ids"].numel()) for b in timed)
    return tokens / (time.perf_counter() - started)


@torch.inference_mode()
def min_cosine(model_name: str, run_dir: Path, count: int, device: torch.device) -> dict:
    """Worst cosine per layer between the run's means and an fp32 forward (sdpa)."""
    model = load_model(model_name, random_weights=True, seed=0, device=device).model
    forward = PackedESM2(model, attention="sdpa")
    with open_embeddings(run_dir) as result:
        rows = np.unique(np.linspace(0, len(result) - 1, min(count, len(result))).astype(np.int64))
        index = build_index([Path(result.config["inputs"][0])], result.config["input_type"])
        worst = {}
        for layer in result.layers:
            got = torch.from_numpy(result.dataset(layer, "mean")[rows])
            expected = []
            for start in range(0, len(rows), 64):
                part = rows[start : start + 64]
                batch = pack_residues(index.read_many(part), index.ids_of(part), part)
                hidden = forward(
                    batch["input_ids"].to(device),
                    batch["cu_seqlens"].to(device),
                    batch["max_seqlen"],
                    [layer],
                )[layer].float()
                cu = batch["cu_seqlens"].tolist()
                expected.extend(hidden[a + 1 : b - 1].mean(0).cpu() for a, b in pairwise(cu))
            cos = torch.nn.functional.cosine_similarity(got, torch.stack(expected), dim=1)
            worst[str(layer)] = float(cos.min())
    return worst


def one_run(spec: tuple, work: Path, args: argparse.Namespace, device: torch.device) -> dict:
    model, kind, pooling, size = spec
    inputs = work / f"{kind}_{size}.fasta"
    if not inputs.exists():
        say(f"writing {inputs.name}")
        (write_reads if kind == "dna" else write_proteins)(inputs, size, seed=7)
    run_dir = work / f"run_{model}_{kind}_{pooling}"
    cli = [str(inputs), "-o", str(run_dir), "--model", model, "--random-weights"]
    cli += ["--pooling", pooling, "--device", device.type, "--force"]
    if kind == "dna":
        cli += ["--input-type", "dna"]
    if pooling == "per-token":
        cli += ["--store-dtype", "float16"]
    env = {**os.environ, "VIRNUCPRO_PROGRESS_INTERVAL": "1"}
    say(f"run {model} {kind} {pooling}")
    wall, timeline, peak_gb = run_cli(cli, env)
    with open_embeddings(run_dir) as result:
        sequences = len(result)
        tokens = int(np.asarray(result.lengths).sum()) + 2 * sequences
        budget = int(result.config["token_budget"])
    points = timeline.points
    first = next((p for p in points if p[1] > 0), None)
    last = next((p for p in points if p[1] == p[2]), None)
    summary = next((float(line.split()[0]) for line in timeline.log if " done: " in line), None)
    entry = {
        "model": model,
        "set": "reads" if kind == "reads" else "dna",
        "pooling": pooling,
        "sequences": sequences,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "cli_tokens_per_s": round(tokens / wall),
        "steady_tokens_per_s": steady(points, tokens / max(sequences, 1)),
        "startup_s": round(first[0], 2) if first else None,
        "merge_s": round(summary - last[0], 2) if last and summary else None,
        "exit_s": round(wall - summary, 2) if summary else None,
        "peak_host_rss_gb": round(peak_gb, 2),
    }
    if kind == "dna":
        entry["reads"] = size
        entry["reads_per_s_to_first_batch"] = round(size / first[0]) if first else None
        entry["cli_reads_per_s"] = round(size / wall)
    if pooling == "mean" and kind == "reads" and not args.cli_only:
        say(f"forward alone {model}")
        entry["forward_tokens_per_s"] = round(forward_speed(model, inputs, budget, device))
        entry["min_cos_vs_fp32"] = min_cosine(model, run_dir, args.check, device)
    (work / f"{run_dir.name}.log").write_text("\n".join(timeline.log) + "\n")
    shutil.rmtree(run_dir)
    return entry


def compare_with_mean(runs: list[dict]) -> None:
    """Per-token whole-run speed over the same model's mean-pooled whole run."""
    means = {r["model"]: r for r in runs if r["pooling"] == "mean" and r["set"] == "reads"}
    for run in runs:
        mean = means.get(run["model"])
        if run["pooling"] == "per-token" and mean is not None:
            run["vs_mean_cli"] = round(run["cli_tokens_per_s"] / mean["cli_tokens_per_s"], 3)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file, rewritten after each run")
    parser.add_argument("--work", type=Path, help="folder for inputs and runs (temporary)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="8M model, tiny sets (smoke)")
    parser.add_argument("--only", nargs="*", type=int, help="indices of the runs to do")
    parser.add_argument(
        "--cli-only", action="store_true", help="no bare forward or fp32 check (e.g. several GPUs)"
    )
    parser.add_argument("--note", default="", help="what the report should say of the machine")
    parser.add_argument("--tokens", type=int, help="size of each chosen run's set (smaller runs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    args.check = settings["check"]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        name = f"{torch.cuda.device_count()} x {name}"
    report = {
        "device": name,
        "command": " ".join(sys.argv),
        "note": args.note,
        "runs": [],
        "complete": False,
    }
    runs = [settings["runs"][i] for i in args.only] if args.only else settings["runs"]
    if args.tokens:
        runs = [(model, kind, pooling, args.tokens) for model, kind, pooling, _ in runs]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for spec in runs:
            report["runs"].append(one_run(spec, work, args, device))
            compare_with_mean(report["runs"])
            if args.out:
                args.out.write_text(json.dumps(report, indent=2) + "\n")
        report["complete"] = True
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
