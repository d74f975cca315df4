"""The manifest a run writes once, and what ``resume`` reads back from it.

Besides the keys of docs/design.md it records what ``resume`` needs to continue with no
other argument (checkpoint settings, whether the token budget was ``auto``) and each
input's size, so a refused resume can say which input changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from virnucpro.data import SequenceIndex
from virnucpro.infer import LoadedModel

POOLING_NAMES = {"mean": "mean", "bos": "bos", "per-token": "per_token"}
"""Command-line pooling names -> output names (``layer_{L}/per_token``)."""
VERSIONED = ("virnucpro-data", "virnucpro-ckpt", "virnucpro-infer", "virnucpro-cli", "fair-esm")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (``unknown`` from a source tree)."""
    versions = {"torch": torch.__version__}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def model_spec(spec: str) -> str:
    """A model path as an absolute path (resume may start elsewhere); names as they are."""
    path = Path(spec)
    return str(path.resolve()) if path.is_file() else spec


def build_manifest(
    *,
    index: SequenceIndex,
    model_name: str,
    loaded: LoadedModel,
    layers: Sequence[int],
    pooling: Sequence[str],
    precision: str,
    token_budget: int,
    token_budget_auto: bool,
    max_length: int,
    checkpoint_every: int,
    checkpoint_interval: float,
) -> dict[str, Any]:
    return {
        "inputs": [str(Path(path).resolve()) for path in index.files],
        "input_sizes": [Path(path).stat().st_size for path in index.files],
        "input_fingerprint": index.fingerprint,
        "input_type": index.input_type,
        "chunk_size": index.chunk_size,
        "num_sequences": len(index),
        "model": model_name,
        "model_checksum": loaded.checksum,
        "random_weights": loaded.random_weights,
        "seed": loaded.seed,
        "layers": [int(layer) for layer in layers],
        "pooling": [POOLING_NAMES[p] for p in pooling],
        "precision": precision,
        "token_budget": token_budget,
        "token_budget_auto": token_budget_auto,
        "max_length": max_length,
        "embed_dim": loaded.embed_dim,
        "checkpoint_every": checkpoint_every,
        "checkpoint_interval": checkpoint_interval,
        "versions": package_versions(),
    }


def describe_input_change(stored: Mapping[str, Any], index: SequenceIndex) -> str | None:
    """What changed in the inputs since the run started, or None if nothing did."""
    if index.fingerprint == stored["input_fingerprint"] and len(index) == stored["num_sequences"]:
        return None
    changed = [
        f"{Path(path).name} ({old:,} -> {Path(path).stat().st_size:,} bytes)"
        for path, old in zip(stored["inputs"], stored.get("input_sizes", ()), strict=False)
        if Path(path).stat().st_size != old
    ]
    what = (
        ", ".join(changed)
        if changed
        else "the content of " + ", ".join(Path(p).name for p in stored["inputs"])
    )
    return (
        f"inputs changed since the run started: {what}; "
        f"{stored['num_sequences']:,} -> {len(index):,} sequences "
        f"(fingerprint {stored['input_fingerprint'][:12]} -> {index.fingerprint[:12]}); "
        "restore the original inputs, or start a new run (`virnucpro run ... --force`)"
    )
