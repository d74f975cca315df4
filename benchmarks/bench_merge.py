"""The end of a run, timed: merging checkpoints into `embeddings.h5` and checking it, as
the engine does after the last batch (`merge_checkpoints`, then `verify_output`).

    python3 benchmarks/bench_merge.py --rows 200000 --width 1280 --out merge.json

A synthetic mean-pooled run (float32 rows, ids like a reads-mode run's) is written
through the real checkpoint writer, its rows spread over the checkpoints as a packed
plan spreads them (each checkpoint holds rows from all over the input). Reported:
`merge_s`, `check_s` (the block digests this version records) and, as the baseline in
the same run, `check_single_stream_s`: the same file checked against one sha256 stream
per dataset, as outputs before virnucpro-ckpt 0.4 were. Then the same run again with an
`OutputAssembly` polling while its checkpoints are written, as the engine runs one beside
the GPU: `assembled_merge_s` is the merge after the last checkpoint, which then writes
only what the assembly had not (its checkpoints land `--spacing` seconds apart, as a
GPU spaces them). The page cache is warm, as it is after a run (the checkpoints were
just written). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    CheckpointBatch,
    OutputAssembly,
    merge_checkpoints,
    verify_output,
    write_manifest,
)
from virnucpro.ckpt.assembly import POLL_S
from virnucpro.ckpt.checkpoint_file import HASH_THREADS
from virnucpro.ckpt.verify import CHECKSUMS_ATTR, DatasetDigests


def manifest_for(rows: int, width: int) -> dict:
    return {
        "inputs": ["synthetic.fasta"],
        "input_fingerprint": f"synthetic-{rows}",
        "input_type": "protein",
        "chunk_size": 300,
        "num_sequences": rows,
        "model": "synthetic",
        "model_checksum": None,
        "random_weights": True,
        "seed": 1,
        "layers": [33],
        "pooling": ["mean"],
        "precision": "bf16",
        "token_budget": 262144,
        "max_length": 1022,
        "embed_dim": width,
        "versions": {},
    }


def write_run(run_dir: Path, rows: int, width: int, checkpoints: int) -> None:
    write_manifest(run_dir, manifest_for(rows, width))
    write_checkpoints(run_dir, rows, width, checkpoints)


def write_checkpoints(
    run_dir: Path, rows: int, width: int, checkpoints: int, spacing: float = 0.0
) -> None:
    """The checkpoints, ``spacing`` seconds apart (a GPU's pace, for an assembly)."""
    manifest = manifest_for(rows, width)
    rng = np.random.default_rng(0)
    order = rng.permutation(rows)
    with AsyncCheckpointWriter(run_dir, manifest, 0, 1, None) as writer:
        for part in np.array_split(order, checkpoints):
            indices = np.sort(part)
            batch = CheckpointBatch(
                indices=indices,
                ids=[f"r{i:09d}_chunk_1F{1 + i % 3}" for i in indices],
                lengths=np.full(len(indices), 100),
                truncated=np.zeros(len(indices), dtype=bool),
                outputs={"layer_33/mean": rng.standard_normal((len(indices), width), np.float32)},
            )
            writer.write_checkpoint_async(batch, "final")
            time.sleep(spacing)


def as_single_streams(path: Path) -> None:
    """Record the 0.3 digests (one sha256 stream per dataset) in place of the blocks."""
    with h5py.File(path, "r+") as f:
        digests = DatasetDigests(block_bytes=0)
        for name in json.loads(f.attrs[CHECKSUMS_ATTR]):
            digests.start(name, f[name].dtype, f[name].shape)
            if name == "ids":
                digests.update_ids(f[name].asstr()[()].tolist())
            else:
                digests.update(name, f[name][()])
        f.attrs[CHECKSUMS_ATTR] = json.dumps(digests.hexdigests())


def timed(work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return round(time.perf_counter() - started, 3), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument(
        "--spacing", type=float, default=0.5, help="seconds between checkpoints (assembled run)"
    )
    parser.add_argument("--work", type=Path, help="folder for the run (temporary)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        run_dir = Path(scratch) / "run"
        write_seconds, _ = timed(
            lambda: write_run(run_dir, args.rows, args.width, args.checkpoints)
        )
        merge_seconds, path = timed(lambda: merge_checkpoints(run_dir))
        check_seconds, problem = timed(lambda: verify_output(run_dir))
        assert problem is None, problem
        as_single_streams(path)
        stream_seconds, problem = timed(lambda: verify_output(run_dir))
        assert problem is None, problem
        size = path.stat().st_size
        assembled_dir = Path(scratch) / "assembled"
        write_manifest(assembled_dir, manifest_for(args.rows, args.width))
        assembly = OutputAssembly(assembled_dir, manifest_for(args.rows, args.width))
        assembly.start()
        write_checkpoints(assembled_dir, args.rows, args.width, args.checkpoints, args.spacing)
        time.sleep(2 * POLL_S)  # the run's last batch: the assembly saw what had landed
        assembled_seconds, _ = timed(lambda: merge_checkpoints(assembled_dir, assembly=assembly))
        assembly.discard()
        assert verify_output(assembled_dir) is None
    report = {
        "benchmark": "merge",
        "command": "python3 benchmarks/bench_merge.py "
        + " ".join(f"--{k} {v}" for k, v in (("rows", args.rows), ("width", args.width))),
        "cores": os.cpu_count(),
        "hash_threads": HASH_THREADS,
        "rows": args.rows,
        "width": args.width,
        "checkpoints": args.checkpoints,
        "output_bytes": size,
        "write_checkpoints_s": write_seconds,
        "merge_s": merge_seconds,
        "check_s": check_seconds,
        "check_single_stream_s": stream_seconds,
        "check_speedup": round(stream_seconds / check_seconds, 2),
        "merge_GB_per_s": round(size / merge_seconds / 1e9, 2),
        "assembled_merge_s": assembled_seconds,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
