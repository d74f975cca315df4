"""Scaling over the GPUs of one node through the real multi-GPU path, as JSON.

    python benchmarks/bench_scale.py --gpus 0,1 --out benchmarks/results/scale_2xh200.json
    python benchmarks/bench_scale.py --quick --device cpu        # smoke run, 8M model

For each model (random weights, seeded, bf16 on GPUs, fp32 on the CPU) the input is the
same generated data: the 60-166 aa set (six-frame translations of 300 bp reads) and the
UniRef-like set (log-normal, median 260 aa, clipped to 30..1022), half of the tokens
each, as two FASTA files of one run. The run is set up as ``virnucpro run`` sets it up
(``virnucpro.infer.job.setup.set_up_run``: index, model described, ``auto`` precision and
token budget resolved, manifest written) and embedded three times, each time through
``BatchQueueManager`` with the worker code of ``virnucpro run --gpus``
(``virnucpro.infer.job.node_worker.embedding_worker``: model through the plugin registry,
compiled on CUDA, one unit at a time into its own rank directory, checkpoints and all):

- ``one``: on the first device; ``two``: on the first two devices. Each worker warms up
  (compiles) before it reports ready, and time counts from the moment every worker is
  ready to the last unit done; tokens are the real tokens (residues + BOS/EOS) finished
  in that window. efficiency = two tokens/s / (2 x one tokens/s).
- ``killed`` (first model only unless ``--kill-all``): on two devices, worker 1 is
  SIGKILLed after its first progress report; the queue respawns it and re-queues its
  unit, which skips the rows already checkpointed. The merged output must hold the same
  ids and lengths as ``two`` exactly, and embeddings within the stated tolerance (GPU
  kernels may round differently for other batch shapes): |a - b| <= ATOL + RTOL |b|.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from virnucpro.ckpt import merge_checkpoints, resume_from_checkpoints, write_manifest
from virnucpro.data import plan_batches
from virnucpro.infer import BatchQueueManager, QueueEvent, cut_into_units
from virnucpro.infer.job.config import RunConfig
from virnucpro.infer.job.devices import Target
from virnucpro.infer.job.node_worker import embedding_worker
from virnucpro.infer.job.reporting import LoggingReporter
from virnucpro.infer.job.setup import Session, set_up_run
from virnucpro.infer.plugins import load_plugins

AMINO_ACIDS = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)
MODELS = ["esm2_t33_650M_UR50D", "esm2_t36_3B_UR50D"]
TOKENS = {"esm2_t33_650M_UR50D": 12_000_000, "esm2_t36_3B_UR50D": 3_600_000}
QUICK_MODEL, QUICK_TOKENS = "esm2_t6_8M_UR50D", 30_000
ATOL, RTOL = 2e-2, 2e-2
"""bf16 keeps 8 significant bits (relative step 2^-8 = 0.004); over 33-36 layers a
different batch shape can move a pooled value by a few steps."""


def generate(path: Path, kind: str, tokens: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "reads":
        lengths = rng.integers(60, 167, size=tokens // 60 + 1)
    else:
        lengths = np.clip(rng.lognormal(np.log(260), 0.6, size=tokens // 30 + 1), 30, 1022)
        lengths = lengths.astype(np.int64)
    count = int(np.searchsorted(np.cumsum(lengths + 2), tokens)) + 1
    with path.open("w") as out:
        for number, length in enumerate(lengths[:count].tolist()):
            residues = AMINO_ACIDS[rng.integers(0, 20, size=length)].tobytes().decode()
            out.write(f">{kind}_{number:07d}\n{residues}\n")


def say(message: str) -> None:
    print(f"[bench_scale] {message}", file=sys.stderr, flush=True)


class Clock:
    """Queue events -> the steady window: from every worker ready to the last unit."""

    def __init__(self, workers: int, kill_after: int | None) -> None:
        self.workers = workers
        self.ready: set[int] = set()
        self.tokens: dict[int, int] = {}
        self.start: float | None = None
        self.start_tokens = 0
        self.end = 0.0
        self.kill_after = kill_after
        self.killed: int | None = None
        self.failures: list[str] = []

    def __call__(self, event: QueueEvent) -> None:
        worker = event.worker
        self.tokens[worker.worker_id] = worker.tokens_done
        if event.kind == "ready":
            self.ready.add(worker.worker_id)
            if self.start is None and len(self.ready) == self.workers:
                self.start, self.start_tokens = time.perf_counter(), sum(self.tokens.values())
        elif event.kind == "unit_done":
            self.end = time.perf_counter()
        elif event.kind == "unit_failed":
            self.failures.append(f"worker {worker.worker_id}: {event.detail}")
        elif (
            event.kind == "progress"
            and self.kill_after is not None
            and self.killed is None
            and worker.worker_id == 1
            and worker.sequences_done >= self.kill_after
        ):
            self.killed = worker.pid
            os.kill(worker.pid, signal.SIGKILL)

    def rate(self) -> dict:
        seconds = self.end - (self.start or self.end)
        tokens = sum(self.tokens.values()) - self.start_tokens
        return {
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        }


def run_once(setup: Session, devices: list[str], run_dir: Path, kill: bool) -> tuple[dict, Path]:
    """Embed the prepared run again in ``run_dir``: the same manifest, plan and units."""
    run_dir.mkdir(parents=True)
    manifest = setup.manifest
    write_manifest(run_dir, manifest.to_dict())
    session = Session(run_dir, setup.shared, setup.index)
    lengths, max_length = setup.batch_costs()
    batches = plan_batches(lengths, manifest.token_budget, max_length)
    units = cut_into_units(batches, setup.index.ids, len(devices))
    clock = Clock(len(devices), kill_after=1 if kill else None)
    manager = BatchQueueManager(
        embedding_worker,
        devices,
        worker_kwargs={
            "session": session,
            "stop": multiprocessing.get_context("spawn").Event(),
            "world_size": len(devices),
            "warmup": True,
        },
    )
    manager.run(units, clock)
    resume_from_checkpoints(run_dir, manifest.to_dict(), quarantine=True)
    output = merge_checkpoints(run_dir)
    result = {"devices": devices, "units": len(units), **clock.rate()}
    if kill:
        result["killed_pid"] = clock.killed
        result["failures"] = clock.failures
    return result, output


def compare(reference: Path, other: Path) -> dict:
    with h5py.File(reference) as a, h5py.File(other) as b:
        same_ids = bool(np.array_equal(a["ids"][()], b["ids"][()]))
        same_lengths = bool(np.array_equal(a["lengths"][()], b["lengths"][()]))
        x, y = a["embeddings"][()], b["embeddings"][()]
    diff = np.abs(y - x)
    within = bool(np.all(diff <= ATOL + RTOL * np.abs(x)))
    return {
        "ids_equal": same_ids,
        "lengths_equal": same_lengths,
        "embeddings_max_abs_diff": float(diff.max()),
        "embeddings_within_tolerance": within,
        "tolerance": f"|a-b| <= {ATOL} + {RTOL}|b|",
        "ok": same_ids and same_lengths and within,
    }


def prepare(model: str, inputs: list[Path], device: str, run_dir: Path) -> Session:
    """The run as `virnucpro run` sets it up on ``device`` (random weights, seed 0;
    precision and token budget ``auto``), its manifest written in ``run_dir``."""
    config = RunConfig(inputs=tuple(inputs), model=model, random_weights=True, seed=0)
    target = Target(torch.device(device), device)
    return set_up_run(
        config, run_dir, target, load_plugins(os.environ), LoggingReporter(), force=False
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tokens", type=int, help="tokens of generated data per model")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--gpus", default="0,1", help="the two GPUs (physical ids)")
    parser.add_argument("--kill-all", action="store_true", help="kill check on every model")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MODEL}, few tokens")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda":
        devices = [f"cuda:{int(gpu)}" for gpu in args.gpus.split(",")][:2]
        if len(devices) < 2 or torch.cuda.device_count() < 2:
            raise SystemExit("bench_scale needs two GPUs (or --device cpu)")
        name = torch.cuda.get_device_name(0)
    else:
        devices, name = ["cpu", "cpu"], "cpu"
    models = [QUICK_MODEL] if args.quick else args.models.split(",")
    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "device": f"{name} x{len(devices)}" if args.device == "cuda" else "cpu (2 processes)",
        "torch": torch.__version__,
        "sets": "reads 60-166 aa + uniref-like median 260 aa, half the tokens each",
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        root = Path(scratch)
        for number, model in enumerate(models):
            tokens = QUICK_TOKENS if args.quick else args.tokens or TOKENS.get(model, 2_000_000)
            inputs = [root / f"{model}_reads.fasta", root / f"{model}_uniref.fasta"]
            generate(inputs[0], "reads", tokens // 2, 1)
            generate(inputs[1], "uniref", tokens // 2, 2)
            setup = prepare(model, inputs, devices[0], root / f"{model}_setup")
            entry: dict = {
                "token_budget": setup.manifest.token_budget,
                "precision": setup.manifest.precision,
            }
            say(f"{model}: 1 device")
            entry["one"], _ = run_once(setup, devices[:1], root / f"{model}_one", kill=False)
            say(f"{model}: 2 devices")
            entry["two"], reference = run_once(setup, devices, root / f"{model}_two", kill=False)
            one, two = entry["one"]["tokens_per_s"], entry["two"]["tokens_per_s"]
            entry["efficiency"] = round(two / (2 * one), 3) if one and two else None
            if number == 0 or args.kill_all:
                say(f"{model}: 2 devices, worker 1 killed")
                entry["killed"], output = run_once(
                    setup, devices, root / f"{model}_killed", kill=True
                )
                entry["killed"]["equal_to_undisturbed"] = compare(reference, output)
            report["models"][model] = entry
            say(json.dumps(entry))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
