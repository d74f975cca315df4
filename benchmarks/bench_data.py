"""Data pipeline throughput: index time and packed-batch loader residues/s, printed as JSON.

    python benchmarks/bench_data.py --count 1000000 --lengths uniform --workers 1 2 4

Generates a FASTA of `--count` random proteins (`uniform`: 60-166 aa; `uniref`: log-normal
around a 260 aa median, capped at 5000), indexes it, plans 4096-token batches and iterates
the spawned DataLoader once per worker count.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.data import (
    PackedBatchDataset,
    build_index,
    create_async_dataloader,
    packing_efficiency,
    plan_batches,
)

AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def sample_lengths(count: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(60, 167, size=count)
    return np.clip(rng.lognormal(np.log(260), 0.6, size=count).astype(np.int64), 20, 5000)


def write_fasta(path: Path, lengths: np.ndarray, rng: np.random.Generator) -> None:
    residues = AMINO_ACIDS[rng.integers(0, len(AMINO_ACIDS), size=int(lengths.sum()))].tobytes()
    position = 0
    with open(path, "wb") as handle:
        for i, n in enumerate(lengths.tolist()):
            sequence = residues[position : position + n]
            position += n
            lines = b"\n".join(sequence[j : j + 60] for j in range(0, n, 60))
            handle.write(b">seq%d\n%s\n" % (i, lines))


def loader_throughput(index, batches, workers: int) -> dict:
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches), batch_size=None, num_workers=workers, prefetch_factor=4
    )
    iterator = iter(loader)
    first = next(iterator)
    residues = int(first["lengths"].sum())
    start = time.perf_counter()
    for batch in iterator:
        residues += int(batch["lengths"].sum())
    seconds = time.perf_counter() - start
    measured = residues - int(first["lengths"].sum())
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "residues_per_s": round(measured / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--lengths", choices=["uniform", "uniref"], default="uniform")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--token-budget", type=int, default=4096)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.fasta"
        lengths = sample_lengths(args.count, args.lengths, rng)
        write_fasta(path, lengths, rng)
        start = time.perf_counter()
        index = build_index([path])
        index_seconds = time.perf_counter() - start
        start = time.perf_counter()
        batches = plan_batches(index.lengths, args.token_budget)
        plan_seconds = time.perf_counter() - start
        result = {
            "count": args.count,
            "lengths": args.lengths,
            "residues": int(index.lengths.sum()),
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "index_seconds": round(index_seconds, 2),
            "plan_seconds": round(plan_seconds, 2),
            "batches": len(batches),
            "packing_efficiency": round(
                packing_efficiency(batches, index.lengths, args.token_budget), 4
            ),
            "loader": [loader_throughput(index, batches, w) for w in args.workers],
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
