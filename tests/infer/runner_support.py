"""Real parts for the runner and queue-manager tests: tiny random-weight fair-esm ESM-2
models, a reference packed forward that runs fair-esm's own `forward` on each sequence
alone, packed batches built with fair-esm's batch converter, and queue workers.

This is a plain module (not a test file) so that spawned queue workers can import it
by name; the tests put its folder on sys.path, which spawned children inherit.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Sequence

import esm
import numpy as np
import torch
from esm.model.esm2 import ESM2

ALPHABET = esm.Alphabet.from_architecture("ESM-1b")
AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"


def tiny_esm2(num_layers: int = 2, embed_dim: int = 32, heads: int = 4, seed: int = 0) -> ESM2:
    """A fair-esm ESM2 with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return ESM2(num_layers, embed_dim, heads, ALPHABET, token_dropout=True).eval()


class ReferencePackedForward:
    """Correct and slow: fair-esm's `ESM2.forward` on each packed sequence alone."""

    def __init__(self, model: ESM2) -> None:
        self.model = model

    def __call__(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Sequence[int],
    ) -> dict[int, torch.Tensor]:
        bounds = cu_seqlens.tolist()
        assert max(b - a for a, b in itertools.pairwise(bounds)) == max_seqlen
        pieces: dict[int, list[torch.Tensor]] = {layer: [] for layer in repr_layers}
        for start, end in itertools.pairwise(bounds):
            out = self.model(input_ids[start:end].unsqueeze(0), repr_layers=list(repr_layers))
            for layer in repr_layers:
                pieces[layer].append(out["representations"][layer][0])
        return {layer: torch.cat(rows) for layer, rows in pieces.items()}


class OutOfMemoryAbove:
    """Stands in for a GPU that cannot hold more than `max_tokens` packed tokens: the
    wrapped forward raises torch.OutOfMemoryError above that, as CUDA's allocator does."""

    def __init__(self, forward: Callable, max_tokens: int) -> None:
        self.forward = forward
        self.max_tokens = max_tokens
        self.attempts: list[int] = []

    def __call__(self, input_ids, cu_seqlens, max_seqlen, repr_layers):
        self.attempts.append(int(input_ids.numel()))
        if input_ids.numel() > self.max_tokens:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory: {input_ids.numel()} tokens > {self.max_tokens}"
            )
        return self.forward(input_ids, cu_seqlens, max_seqlen, repr_layers)


def random_protein(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list(AMINO_ACIDS), size=length))


def tokens_of(sequence: str) -> torch.Tensor:
    """BOS + residues + EOS, from fair-esm's own batch converter."""
    _, _, tokens = ALPHABET.get_batch_converter()([("x", sequence)])
    return tokens[0]


def packed_batch(
    records: Sequence[tuple[str, str]], indices: Sequence[int], max_length: int = 0
) -> dict:
    """A packed batch as docs/design.md defines it (residues truncated at max_length)."""
    kept = [seq[:max_length] if max_length else seq for _, seq in records]
    tokens = [tokens_of(seq) for seq in kept]
    sizes = [t.numel() for t in tokens]
    cu = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return {
        "input_ids": torch.cat(tokens).to(torch.int64),
        "cu_seqlens": torch.from_numpy(cu),
        "max_seqlen": max(sizes),
        "sequence_ids": [name for name, _ in records],
        "num_sequences": len(records),
        "indices": torch.tensor(list(indices), dtype=torch.int64),
        "lengths": torch.tensor([len(s) for s in kept], dtype=torch.int64),
        "truncated": torch.tensor(
            [len(s) < len(o) for s, (_, o) in zip(kept, records, strict=True)]
        ),
    }


def make_records(count: int, seed: int, min_len: int = 1, max_len: int = 40) -> list:
    rng = np.random.default_rng(seed)
    return [
        (f"seq_{i}", random_protein(rng, int(rng.integers(min_len, max_len + 1))))
        for i in range(count)
    ]


def batches_of(records: list, sizes: Sequence[int]) -> list[dict]:
    """Consecutive records cut into batches of the given sizes (input order kept)."""
    batches, start = [], 0
    for size in sizes:
        chunk = records[start : start + size]
        batches.append(packed_batch(chunk, range(start, start + size)))
        start += size
    return batches


# ---- queue-manager workers (run in spawned processes) ----


def esm_worker(device: torch.device, num_layers: int, seed: int):
    """Loads a tiny ESM-2 once per process; each unit (a list of (id, seq) batches with
    their input indices) is embedded with the reference forward and the stream runner."""
    from virnucpro.infer.runner import AsyncInferenceRunner

    model = tiny_esm2(num_layers=num_layers, seed=seed).to(device)
    runner = AsyncInferenceRunner(
        ReferencePackedForward(model), device, [num_layers], poolings=("mean",)
    )

    def handle(unit: list, report: Callable[[int], None]) -> dict[int, np.ndarray]:
        embedded = {}
        batches = [packed_batch(records, indices) for records, indices in unit]
        for result in runner.run(batches):
            for index, row in zip(
                result.indices, result.outputs[f"layer_{num_layers}/mean"], strict=True
            ):
                embedded[int(index)] = row
            report(result.num_sequences)
        return embedded

    return handle


def square_worker(
    device: torch.device,
    crash_on: int | None = None,
    raise_on: int | None = None,
    slow_on: int | None = None,
):
    """A deterministic computation; a unit holding `crash_on` kills its own process with
    SIGKILL (a real crash), one holding `raise_on` raises, one holding `slow_on` takes
    two seconds (a slow device)."""

    def handle(unit: list[int], report: Callable[[int], None]) -> dict:
        if slow_on in unit:
            time.sleep(2.0)
        if crash_on in unit:
            os.kill(os.getpid(), signal.SIGKILL)
        if raise_on in unit:
            raise ValueError(f"cannot handle item {raise_on}")
        report(len(unit))
        return {"squares": [x * x for x in unit], "device": str(device), "pid": os.getpid()}

    return handle


def gpu_identity_worker(device: torch.device):
    """Reports which physical GPU (its UUID) and how many GPUs the worker sees."""

    def handle(unit: list[int], report: Callable[[int], None]) -> dict:
        report(len(unit))
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return {"uuid": uuid, "device": str(device), "visible": torch.cuda.device_count()}

    return handle


def failing_setup_worker(device: torch.device):
    """A worker whose setup always fails, like a model that cannot be loaded."""
    raise RuntimeError(f"model cannot be loaded on {device}")
