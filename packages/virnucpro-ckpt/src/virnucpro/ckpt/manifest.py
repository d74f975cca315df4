"""The run manifest: the run's configuration, written once, compared on resume.

The manifest carries a sha256 of its own content (``manifest_sha256``), so an edit is
recognised as an edit and refused, naming the fields that differ from what the
checkpoints' headers record, instead of quarantining every checkpoint and computing
again under the edited settings (lesson 17). Manifests without it (older runs) stay
readable; for them an edit shows as a manifest no checkpoint agrees with.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py

from virnucpro.ckpt.checkpoint_file import IDENTITY_KEYS
from virnucpro.ckpt.errors import CheckpointError, ManifestMismatchError, ManifestTamperedError
from virnucpro.ckpt.fsio import publish_exclusive
from virnucpro.ckpt.layout import CHECKPOINT_NAME, MANIFEST_NAME, iter_rank_dirs
from virnucpro.ckpt.safe_write import disk_full_error, is_disk_full

CHECKSUM_KEY = "manifest_sha256"
# What every checkpoint header records of the manifest (versions may differ by session).
HEADER_KEYS = (*IDENTITY_KEYS, "embed_dim")

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
    content = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    content[CHECKSUM_KEY] = manifest_checksum(content)
    try:
        tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        published = publish_exclusive(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(final) from None
        raise
    if not published:
        raise CheckpointError(f"{final} exists already; resume the run or use a new directory")
    return final


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every key but the checksum itself."""
    content = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest without its checksum; ManifestTamperedError if it was edited."""
    stored, checksum = _load(run_dir)
    if checksum is not None and checksum != manifest_checksum(stored):
        raise ManifestTamperedError(_tampered_message(Path(run_dir), stored))
    return stored


def check_manifest_integrity(run_dir: Path) -> dict[str, Any]:
    """Like :func:`read_manifest`, and for a manifest without a checksum (older runs)
    also refuse one that no checkpoint's header agrees with: it was edited."""
    stored, checksum = _load(run_dir)
    run_dir = Path(run_dir)
    if checksum is not None:
        if checksum != manifest_checksum(stored):
            raise ManifestTamperedError(_tampered_message(run_dir, stored))
        return stored
    headers = checkpoint_headers(run_dir)
    if headers and not any(_differing(stored, h) == [] for h in headers):
        raise ManifestTamperedError(_tampered_message(run_dir, stored))
    return stored


def checkpoint_headers(run_dir: Path) -> list[dict[str, Any]]:
    """The manifest keys each readable checkpoint records; damaged files are skipped."""
    headers = []
    for _rank, directory in iter_rank_dirs(Path(run_dir)):
        for path in sorted(directory.iterdir()):
            if not CHECKPOINT_NAME.match(path.name):
                continue
            try:
                with h5py.File(path, "r") as f:
                    headers.append({k: json.loads(f.attrs[k]) for k in HEADER_KEYS})
            except (OSError, KeyError, ValueError, TypeError):
                continue
    return headers


def _load(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    path = Path(run_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: {run_dir} is not a virnucpro run") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a virnucpro manifest (not a JSON object)")
    checksum = data.pop(CHECKSUM_KEY, None)
    return data, checksum


def _differing(stored: Mapping[str, Any], header: Mapping[str, Any]) -> list[str]:
    return [k for k in HEADER_KEYS if stored.get(k) != header.get(k)]


def _tampered_message(run_dir: Path, stored: Mapping[str, Any]) -> str:
    path = run_dir / MANIFEST_NAME
    headers = checkpoint_headers(run_dir)
    advice = "restore the original values or start a new output directory"
    if headers:
        counted = Counter(json.dumps(h, sort_keys=True) for h in headers)
        header = json.loads(counted.most_common(1)[0][0])
        fields = _differing(stored, header)
        if fields:
            said = ", ".join(
                f"{k} {stored.get(k)!r} (checkpoints: {header.get(k)!r})" for k in fields
            )
            return f"{path} was edited after the run started: {said}; {advice}"
    return (
        f"{path} was edited after the run started (its checksum does not match; "
        f"the fields checkpoints record agree, so the edit is elsewhere); {advice}"
    )


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
