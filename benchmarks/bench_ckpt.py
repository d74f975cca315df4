"""Checkpoint writer benchmark: write throughput (MB/s), and proof that a producer
slower than the disk never waits for the writer (its queue-wait time stays ~0).

    python benchmarks/bench_ckpt.py [--rows 10000] [--width 1280] [--checkpoints 8]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.ckpt import AsyncCheckpointWriter, CheckpointBatch, write_manifest


def manifest(num: int, width: int) -> dict:
    return {
        "inputs": ["bench.fasta"],
        "input_fingerprint": "bench",
        "input_type": "protein",
        "chunk_size": 300,
        "num_sequences": num,
        "model": "bench",
        "model_checksum": None,
        "random_weights": True,
        "seed": 0,
        "layers": [33],
        "pooling": ["mean"],
        "precision": "bfloat16",
        "token_budget": 16384,
        "max_length": 1022,
        "embed_dim": width,
        "versions": {},
    }


def batch(start: int, rows: int, width: int) -> CheckpointBatch:
    rng = np.random.default_rng(start)
    return CheckpointBatch(
        indices=np.arange(start, start + rows),
        ids=[f"seq{i}" for i in range(start, start + rows)],
        lengths=rng.integers(50, 500, rows),
        truncated=np.zeros(rows, bool),
        outputs={"layer_33/mean": rng.standard_normal((rows, width), dtype=np.float32)},
    )


def run(directory: Path, rows: int, width: int, count: int, produce_seconds: float) -> dict:
    """Queue ``count`` checkpoints, the producer spending ``produce_seconds`` between them."""
    run_dir = directory / f"run_{produce_seconds}"
    spec = manifest(rows * count, width)
    write_manifest(run_dir, spec)
    batches = [batch(i * rows, rows, width) for i in range(count)]
    writer = AsyncCheckpointWriter(run_dir, spec, max_pending=2)
    started = time.perf_counter()
    for item in batches:
        time.sleep(produce_seconds)  # a GPU step: the host thread waits, GIL released
        writer.write_checkpoint_async(item, "sequence_count")
    produce_done = time.perf_counter() - started
    writer.shutdown()
    stats = writer.stats
    megabytes = stats.bytes_written / 1e6
    return {
        "producer_seconds_per_checkpoint": produce_seconds,
        "checkpoints": stats.checkpoints_written,
        "megabytes_written": round(megabytes, 1),
        "write_seconds_total": round(stats.write_seconds, 3),
        "write_seconds_per_checkpoint": round(stats.write_seconds / count, 4),
        "write_mb_per_s": round(megabytes / stats.write_seconds, 1),
        "producer_wait_seconds_total": round(stats.producer_wait_seconds, 6),
        "producer_wait_fraction": round(stats.producer_wait_seconds / produce_done, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        flat_out = run(directory, args.rows, args.width, args.checkpoints, 0.0)
        slower = max(0.01, 2 * flat_out["write_seconds_per_checkpoint"])
        paced = run(directory, args.rows, args.width, args.checkpoints, slower)
    print(
        json.dumps(
            {
                "rows_per_checkpoint": args.rows,
                "width": args.width,
                "disk_bound_producer": flat_out,
                "producer_slower_than_disk": paced,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
