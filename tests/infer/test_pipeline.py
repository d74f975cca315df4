"""embed_rank: every planned row checkpointed exactly once; a stop keeps what finished."""

from __future__ import annotations

import h5py
import numpy as np

from virnucpro.ckpt import merge_checkpoints, write_manifest
from virnucpro.data import build_index, plan_batches
from virnucpro.infer import STOPPED, CheckpointPolicy, PackedESM2, embed_rank

LAYERS = [2]


def setup_run(tmp_path, make_esm2):
    fasta = tmp_path / "in.fasta"
    rng = np.random.default_rng(0)
    amino = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    fasta.write_text(
        "".join(
            f">p{n}\n{amino[rng.integers(0, 20, int(rng.integers(5, 30)))].tobytes().decode()}\n"
            for n in range(20)
        )
    )
    index = build_index([fasta])
    manifest = {
        "inputs": [str(fasta)],
        "input_fingerprint": index.fingerprint,
        "input_type": "protein",
        "chunk_size": 300,
        "num_sequences": len(index),
        "model": "tiny",
        "model_checksum": None,
        "random_weights": True,
        "seed": 0,
        "layers": LAYERS,
        "pooling": ["mean"],
        "precision": "fp32",
        "token_budget": 64,
        "max_length": 1022,
        "embed_dim": 16,
        "versions": {},
    }
    run_dir = tmp_path / "run"
    write_manifest(run_dir, manifest)
    forward = PackedESM2(make_esm2(2, 16, 2))
    return run_dir, manifest, index, forward


def stored_indices(run_dir) -> list[np.ndarray]:
    parts = []
    for path in sorted((run_dir / "checkpoints").glob("rank_*/*.h5")):
        with h5py.File(path, "r") as f:
            parts.append(f["indices"][()])
    return parts


def test_every_row_once_and_checkpoints_by_count(tmp_path, make_esm2):
    run_dir, manifest, index, forward = setup_run(tmp_path, make_esm2)
    batches = plan_batches(index.lengths, 64)
    seen = []
    outcome = embed_rank(
        run_dir,
        manifest,
        index,
        batches,
        forward,
        "cpu",
        policy=CheckpointPolicy(every=5, interval_s=300.0, max_bytes=2**30),
        num_workers=0,
        on_batch=lambda sequences, tokens: seen.append((sequences, tokens)),
    )
    assert outcome.status == "finished" and outcome.sequences == 20
    assert outcome.batches == len(batches) == len(seen)
    assert outcome.tokens == sum(t for _, t in seen) == int(index.lengths.sum()) + 40
    parts = stored_indices(run_dir)
    assert len(parts) == len(outcome.checkpoints) > 1
    assert all(len(p) >= 5 for p in parts[:-1])
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(20))
    merge_checkpoints(run_dir)


def test_stop_checkpoints_the_finished_batches(tmp_path, make_esm2):
    run_dir, manifest, index, forward = setup_run(tmp_path, make_esm2)
    batches = plan_batches(index.lengths, 64)
    finished = []
    outcome = embed_rank(
        run_dir,
        manifest,
        index,
        batches,
        forward,
        "cpu",
        policy=CheckpointPolicy(every=1000, interval_s=300.0, max_bytes=2**30),
        num_workers=0,
        on_batch=lambda sequences, tokens: finished.append(sequences),
        should_stop=lambda: len(finished) >= 2,
    )
    assert outcome.status == STOPPED and outcome.batches == 2
    (stored,) = stored_indices(run_dir)
    assert np.array_equal(np.sort(stored), np.sort(np.concatenate(batches[:2])))


def test_rows_held_reaching_the_size_bound_cut_a_checkpoint(tmp_path, make_esm2):
    """Per-token rows grow with residues: the size bound, not the count, cuts them."""
    run_dir, manifest, index, forward = setup_run(tmp_path, make_esm2)
    manifest = {**manifest, "pooling": ["per_token"]}
    batches = plan_batches(index.lengths, 64)
    bound = 4 * 16 * 40  # float32 x embed_dim x 40 residues: a batch or two
    outcome = embed_rank(
        run_dir,
        manifest,
        index,
        batches,
        forward,
        "cpu",
        policy=CheckpointPolicy(every=1000, interval_s=300.0, max_bytes=bound),
        num_workers=0,
    )
    parts = stored_indices(run_dir)
    assert len(parts) == len(outcome.checkpoints) > 2
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(20))
    residues = [int(index.lengths[p].sum()) for p in parts]
    # Each checkpoint but the last closed at the first batch that reached the bound.
    largest_batch = max(int(index.lengths[b].sum()) for b in batches)
    assert all(40 <= r < 40 + largest_batch for r in residues[:-1])
