"""The rows one checkpoint holds, with per-token outputs kept as values plus offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from virnucpro.ckpt.layout import PER_TOKEN

OFFSETS_SUFFIX = f"/{PER_TOKEN}_offsets"
SPANS_SUFFIX = "_spans"
VALUES_SUFFIX = f"/{PER_TOKEN}"
STORE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def is_offsets(name: str) -> bool:
    return name.endswith(OFFSETS_SUFFIX)


def is_spans(name: str) -> bool:
    """The merged file's ``layer_{L}/per_token_spans``."""
    return name.endswith(VALUES_SUFFIX + SPANS_SUFFIX)


def is_per_token(name: str) -> bool:
    return name.endswith(VALUES_SUFFIX)


@dataclass
class CheckpointBatch:
    """Results for some input indices; ``outputs`` maps dataset names to arrays.

    Pooled outputs are ``layer_{L}/{pooling}`` (n x D); per-token outputs are
    ``layer_{L}/per_token`` (sum(lengths) x D) with ``layer_{L}/per_token_offsets`` (n+1).
    Embeddings keep their dtype when float16 or float32 (the run's ``store_dtype``).
    """

    indices: np.ndarray
    ids: list[str]
    lengths: np.ndarray
    truncated: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.ids = [str(i) for i in self.ids]
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.truncated = np.asarray(self.truncated, dtype=bool)
        self.outputs = {
            name: np.ascontiguousarray(value, dtype=stored_dtype(name, value))
            for name, value in self.outputs.items()
        }
        self.check()

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.outputs.values()) + self.indices.nbytes * 3)

    def check(self) -> None:
        """Raise ValueError when the arrays disagree about the number of rows."""
        n = len(self)
        if self.indices.ndim != 1:
            raise ValueError("checkpoint batch: indices must be 1-D")
        for name, size in (("ids", len(self.ids)), ("lengths", self.lengths.shape[0])):
            if size != n:
                raise ValueError(f"checkpoint batch: {name} has {size} rows, indices {n}")
        if self.truncated.shape != (n,):
            raise ValueError(f"checkpoint batch: truncated has shape {self.truncated.shape}")
        for name, value in self.outputs.items():
            if is_offsets(name):
                check_offsets(name, value, self.lengths)
                values = self.outputs.get(name[: -len("_offsets")])
                if values is None:
                    raise ValueError(f"checkpoint batch: {name} without its values")
                if values.ndim != 2 or values.shape[0] != value[-1]:
                    raise ValueError(
                        f"checkpoint batch: {name[: -len('_offsets')]} has shape "
                        f"{values.shape}, offsets end at {int(value[-1])}"
                    )
            elif is_per_token(name):
                if name + "_offsets" not in self.outputs:
                    raise ValueError(f"checkpoint batch: {name} without {name}_offsets")
            elif value.ndim != 2 or value.shape[0] != n:
                raise ValueError(f"checkpoint batch: {name} has shape {value.shape}, {n} rows")

    def sorted_by_index(self) -> CheckpointBatch:
        """The same rows in increasing input-index order (per-token segments moved too)."""
        order = np.argsort(self.indices, kind="stable")
        if np.array_equal(order, np.arange(len(self))):
            return self
        outputs = {}
        for name, value in self.outputs.items():
            if is_offsets(name):
                continue
            if is_per_token(name):
                offsets = self.outputs[name + "_offsets"]
                outputs[name] = value[gather_segments(offsets, order)]
                outputs[name + "_offsets"] = offsets_from_lengths(np.diff(offsets)[order])
            else:
                outputs[name] = value[order]
        return CheckpointBatch(
            indices=self.indices[order],
            ids=[self.ids[i] for i in order],
            lengths=self.lengths[order],
            truncated=self.truncated[order],
            outputs=outputs,
        )

    @classmethod
    def join(cls, parts: Sequence[CheckpointBatch]) -> CheckpointBatch:
        """Every row of ``parts`` in increasing input-index order, as a checkpoint file
        holds them. Each value is copied once, straight to its place: joining and then
        sorting copied a per-token checkpoint's gigabyte twice."""
        if not parts:
            raise ValueError("checkpoint batch: nothing to join")
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        place = np.empty_like(order)
        place[order] = np.arange(order.shape[0])
        bounds = offsets_from_lengths(np.array([len(p) for p in parts]))
        lengths = np.concatenate([p.lengths for p in parts])
        outputs = {}
        for name, first in parts[0].outputs.items():
            if is_offsets(name):
                continue
            if is_per_token(name):
                offsets = offsets_from_lengths(lengths[order])
                rows = int(offsets[-1])
                outputs[name + "_offsets"] = offsets
            else:
                rows = indices.shape[0]
            joined = np.empty((rows, first.shape[1]), dtype=first.dtype)
            for number, part in enumerate(parts):
                rows_at = place[bounds[number] : bounds[number + 1]]
                if is_per_token(name):
                    rows_at = scatter_segments(offsets[rows_at], part.outputs[name + "_offsets"])
                joined[rows_at] = part.outputs[name]
            outputs[name] = joined
        ids = [i for p in parts for i in p.ids]
        return cls(
            indices=indices[order],
            ids=[ids[i] for i in order],
            lengths=lengths[order],
            truncated=np.concatenate([p.truncated for p in parts])[order],
            outputs=outputs,
        )


def run_store_dtype(config: Mapping[str, Any]) -> np.dtype:
    """The embeddings' dtype a manifest or header records (runs before it: float32)."""
    return np.dtype(config.get("store_dtype") or "float32")


def stored_dtype(name: str, value: np.ndarray) -> np.dtype:
    """Offsets are int64; embeddings keep float16 or float32 (the run's store dtype),
    anything else becomes float32."""
    if is_offsets(name):
        return np.dtype(np.int64)
    dtype = np.asarray(value).dtype
    return dtype if dtype in STORE_DTYPES else np.dtype(np.float32)


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def check_offsets(name: str, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Offsets start at 0 and step by each row's length (per-token rows = residues)."""
    if offsets.shape != (lengths.shape[0] + 1,) or offsets[0] != 0:
        raise ValueError(f"checkpoint batch: {name} must have n+1 entries starting at 0")
    if not np.array_equal(np.diff(offsets), lengths):
        raise ValueError(f"checkpoint batch: {name} steps differ from lengths")


def scatter_segments(starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row positions that put the ragged segments of ``offsets`` (from 0) one after
    another, segment i starting at row ``starts[i]``: a scatter's destinations."""
    return np.repeat(starts - offsets[:-1], np.diff(offsets)) + np.arange(offsets[-1])


def gather_segments(offsets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Row positions of the ragged segments ``order`` of ``offsets``, concatenated."""
    starts = offsets[:-1][order]
    lengths = np.diff(offsets)[order]
    total = int(lengths.sum())
    shift = np.repeat(starts - offsets_from_lengths(lengths)[:-1], lengths)
    return np.arange(total, dtype=np.int64) + shift
