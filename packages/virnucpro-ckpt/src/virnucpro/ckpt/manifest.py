"""The run manifest: the run's configuration, written once, compared on resume."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from virnucpro.ckpt.errors import CheckpointError, ManifestMismatchError
from virnucpro.ckpt.fsio import publish_exclusive
from virnucpro.ckpt.layout import MANIFEST_NAME

MANIFEST_KEYS = (
    "inputs",
    "input_fingerprint",
    "input_type",
    "chunk_size",
    "num_sequences",
    "model",
    "model_checksum",
    "random_weights",
    "seed",
    "layers",
    "pooling",
    "precision",
    "token_budget",
    "max_length",
    "embed_dim",
    "versions",
)
# What a resume may not change, grouped under the word the message uses.
GUARDED = {
    "inputs": ("inputs", "input_fingerprint", "input_type", "chunk_size", "num_sequences"),
    "model": ("model", "model_checksum", "random_weights", "seed", "embed_dim"),
    "layers": ("layers",),
    "pooling": ("pooling",),
    "precision": ("precision",),
    "max length": ("max_length",),
}


def write_manifest(run_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``RUN_DIR/manifest.json`` atomically, once; refuse to replace an existing one."""
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {', '.join(missing)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / MANIFEST_NAME
    tmp = run_dir / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True) + "\n")
    if not publish_exclusive(tmp, final):
        raise CheckpointError(f"{final} exists already; resume the run or use a new directory")
    return final


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: {run_dir} is not a virnucpro run") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def manifest_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """One phrase per guarded setting that differs, e.g. ``"layers [6] -> [5]"``."""
    found = []
    for word, keys in GUARDED.items():
        changed = [k for k in keys if stored.get(k) != requested.get(k)]
        if changed:
            key = changed[0]
            found.append(f"{word} ({key} {stored.get(key)!r} -> {requested.get(key)!r})")
    return found


def check_manifest(run_dir: Path, requested: Mapping[str, Any]) -> dict[str, Any]:
    """Return the stored manifest, or raise ManifestMismatchError naming what differs."""
    stored = read_manifest(run_dir)
    differences = manifest_differences(stored, requested)
    if differences:
        raise ManifestMismatchError(
            f"cannot resume {run_dir}: it was started with different "
            f"{'; '.join(differences)}; use the original settings or a new output directory"
        )
    return stored
