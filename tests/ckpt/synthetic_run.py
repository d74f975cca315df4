"""A real run driver for the kill tests: embeddings are a pure function of the input index.

Driver mode (no ``--rank``): takes the run lock, writes or checks the manifest, resumes
(moving bad files aside), runs ``--world-size`` ranks (spawned processes when more
than one), and merges when every row is done. Rank mode: works out the rows not yet
done itself (ignoring its own session's files), takes every W-th batch of them, and
checkpoints through the AsyncCheckpointWriter. Not a test module: spawned by tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    CheckpointBatch,
    CheckpointTrigger,
    RunLock,
    merge_checkpoints,
    new_session_id,
    resume_from_checkpoints,
    write_manifest,
)
from virnucpro.ckpt.manifest import check_manifest
from virnucpro.ckpt.trigger import REASON_FINAL

LAYERS = [2, 4]
POOLING = ["mean", "bos", "per_token"]
POOL_CODES = {"mean": 0.0, "bos": 0.5}


def manifest_for(num_sequences: int, width: int) -> dict:
    return {
        "inputs": ["synthetic.fasta"],
        "input_fingerprint": f"synthetic-{num_sequences}",
        "input_type": "protein",
        "chunk_size": 300,
        "num_sequences": num_sequences,
        "model": "synthetic",
        "model_checksum": None,
        "random_weights": True,
        "seed": 7,
        "layers": LAYERS,
        "pooling": POOLING,
        "precision": "float32",
        "token_budget": 4096,
        "max_length": 20,
        "embed_dim": width,
        "versions": {"virnucpro-ckpt": "0.1.0"},
    }


def lengths_of(indices: np.ndarray) -> np.ndarray:
    return 1 + (indices * 37) % 23


def synthetic_batch(indices: np.ndarray, width: int) -> CheckpointBatch:
    """The outputs an uninterrupted run must hold for ``indices``."""
    indices = np.asarray(indices, dtype=np.int64)
    raw = lengths_of(indices)
    lengths = np.minimum(raw, 20)
    cols = np.arange(width) * 0.1
    outputs = {}
    for layer in LAYERS:
        for kind, code in POOL_CODES.items():
            outputs[f"layer_{layer}/{kind}"] = np.sin(
                indices[:, None] * 0.01 + layer + code + cols[None, :]
            )
        token = np.concatenate([np.arange(n) for n in lengths]) if len(indices) else []
        owner = np.repeat(indices, lengths)
        outputs[f"layer_{layer}/per_token"] = np.cos(
            owner[:, None] * 0.01 + np.asarray(token)[:, None] * 0.5 + layer + cols[None, :]
        ).reshape(-1, width)
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        outputs[f"layer_{layer}/per_token_offsets"] = offsets
    return CheckpointBatch(
        indices=indices,
        ids=[f"prot_{i}_é" for i in indices],
        lengths=lengths,
        truncated=raw > 20,
        outputs=outputs,
    )


def run_rank(args: argparse.Namespace, session: str) -> None:
    done = resume_from_checkpoints(
        args.run_dir, quarantine=False, ignore_sessions={session}
    ).done_indices
    todo = np.setdiff1d(np.arange(args.num), done)
    todo = todo[np.random.default_rng(0).permutation(todo.shape[0])]
    batches = [todo[s : s + args.batch] for s in range(0, todo.shape[0], args.batch)]
    manifest = manifest_for(args.num, args.width)
    trigger = CheckpointTrigger(args.seq_threshold, args.time_threshold)
    writer = AsyncCheckpointWriter(
        args.run_dir, manifest, rank=args.rank, world_size=args.world_size, session=session
    )
    parts: list[CheckpointBatch] = []
    for batch_indices in batches[args.rank :: args.world_size]:
        time.sleep(args.delay_ms / 1000)
        parts.append(synthetic_batch(batch_indices, args.width))
        fire, reason = trigger.should_checkpoint(len(batch_indices))
        if fire:
            writer.write_checkpoint_async(CheckpointBatch.join(parts), reason, 1000, 2000)
            parts = []
            trigger.reset()
    if parts:
        writer.write_checkpoint_async(CheckpointBatch.join(parts), REASON_FINAL)
    writer.shutdown()


def run_driver(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    manifest = manifest_for(args.num, args.width)
    with RunLock(run_dir):
        if (run_dir / "manifest.json").exists():
            check_manifest(run_dir, manifest)
        else:
            write_manifest(run_dir, manifest)
        first = resume_from_checkpoints(run_dir, manifest)
        session = new_session_id()
        if args.world_size == 1:
            args.rank = 0
            run_rank(args, session)
        else:
            ranks = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        *sys.argv[1:],
                        "--rank",
                        str(r),
                        "--session",
                        session,
                    ]
                )
                for r in range(args.world_size)
            ]
            if any(p.wait() != 0 for p in ranks):
                sys.exit("a rank failed")
        final = resume_from_checkpoints(run_dir, quarantine=False)
        if final.num_left == 0:
            merge_checkpoints(run_dir)
    print(json.dumps({"done_before": first.num_done, "quarantined": len(first.quarantined)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--seq-threshold", type=int, default=40)
    parser.add_argument("--time-threshold", type=float, default=300.0)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--session")
    args = parser.parse_args()
    if args.rank is None:
        run_driver(args)
    else:
        run_rank(args, args.session)


if __name__ == "__main__":
    main()
