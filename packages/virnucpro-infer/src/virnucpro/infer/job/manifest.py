"""The manifest a run writes once: its resolved configuration and the facts it was
computed from (inputs' fingerprint, model checksum, package versions).

:class:`RunManifest` is the typed form; ``to_dict``/``from_dict`` are the JSON that
ckpt stores and that every checkpoint header repeats. ``resume`` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from virnucpro.infer.job.config import RunConfig
from virnucpro.infer.job.errors import ConfigError

VERSIONED = ("virnucpro-data", "virnucpro-ckpt", "virnucpro-infer", "virnucpro-cli", "fair-esm")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (``unknown`` from a source tree)."""
    import torch

    versions: dict[str, str] = {"torch": str(torch.__version__)}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def model_spec(spec: str) -> str:
    """A model path as an absolute path (resume may start elsewhere); names as they are."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


@dataclass(frozen=True, kw_only=True)
class RunManifest:
    """A run as it was resolved when it started."""

    inputs: list[str]
    input_sizes: list[int]
    input_fingerprint: str
    input_type: str
    chunk_size: int
    strict: bool
    num_sequences: int
    model: str
    model_source: str
    model_backend: str
    model_checksum: str | None
    random_weights: bool
    seed: int | None
    num_layers: int
    embed_dim: int
    layers: list[int]
    pooling: list[str]
    precision: str
    token_budget: int
    token_budget_auto: bool
    max_length: int
    long: str
    window_overlap: int
    checkpoint_every: int
    checkpoint_interval: float
    checkpoint_bytes: int
    store_dtype: str
    compression: str
    output_format: str
    keep_checkpoints: bool
    quality: dict[str, Any]
    """Counts of the input's oddities (``virnucpro.infer.job.quality``)."""
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunManifest:
        data = {**_legacy_values(data), **data}
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ConfigError(
                f"the run's manifest lacks {', '.join(missing)}: it was written by another "
                "virnucpro version or edited; start the run again with --force"
            )
        return cls(**{name: data[name] for name in names})

    @property
    def truncate_at(self) -> int:
        """Residues a sequence is cut to before embedding (0: never)."""
        return self.max_length if self.long == "truncate" else 0

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_manifest(self.to_dict())

    def with_token_budget(self, budget: int) -> RunManifest:
        """The same run with this session's budget (``auto`` is measured per session)."""
        values = self.to_dict()
        values["token_budget"] = budget
        return RunManifest.from_dict(values)


def _legacy_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """What manifests of virnucpro 0.1 did not record, as 0.1 ran it."""
    return {
        "model_source": data.get("model"),
        "model_backend": "esm2",
        "num_layers": max(data.get("layers") or [0]),
        "output_format": "hdf5",
        "checkpoint_bytes": 2**30,
        "long": "truncate",
        "window_overlap": 256,
        "strict": False,
        "quality": {},
        "keep_checkpoints": True,
        "store_dtype": "float32",
        "compression": "none",
    }


def describe_input_change(stored: RunManifest, fingerprint: str, count: int) -> str | None:
    """What changed in the inputs since the run started, or None if nothing did."""
    if fingerprint == stored.input_fingerprint and count == stored.num_sequences:
        return None
    changed = [
        f"{Path(path).name} ({old:,} -> {Path(path).stat().st_size:,} bytes)"
        for path, old in zip(stored.inputs, stored.input_sizes, strict=False)
        if Path(path).stat().st_size != old
    ]
    what = (
        ", ".join(changed)
        if changed
        else "the content of " + ", ".join(Path(p).name for p in stored.inputs)
    )
    return (
        f"inputs changed since the run started: {what}; "
        f"{stored.num_sequences:,} -> {count:,} sequences "
        f"(fingerprint {stored.input_fingerprint[:12]} -> {fingerprint[:12]}); "
        "restore the original inputs, or start a new run (`virnucpro run ... --force`)"
    )
