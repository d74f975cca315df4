"""Checksums of the merged ``embeddings.h5`` and the check that it is whole (lesson 13).

The merge records one digest per dataset in the root attribute ``dataset_sha256``
(JSON text, like every other attribute), hashed from the buffers as they are written,
so the merge reads nothing twice. Why digests and not HDF5's fletcher32: fletcher32
needs chunked datasets (a different storage layout for readers), does not cover the
variable-length ids, and a full check must read every byte either way.

A numeric dataset's digest is ``sha256-blocks:{B}:{hex}``: the sha256 of its header
(name, dtype, shape) followed by the sha256 of each ``B``-byte block of its values in
row order. Blocks hash on every core, so writing and checking a large output goes at
the disk's pace, where one sha256 stream runs at about 1 GB/s. Strings (ids) are
hashed element by element (8-byte length, UTF-8 bytes) as one stream, a plain hex
digest, as every dataset was before virnucpro-ckpt 0.4 (such files still check). Per-token
values live in the output's parts, which are checked against their own data checksums
instead (:mod:`virnucpro.ckpt.parts`).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from virnucpro.ckpt.batch import SPANS_SUFFIX, is_offsets, is_per_token, is_spans, run_store_dtype
from virnucpro.ckpt.checkpoint_file import (
    HASH_THREADS,
    IDENTITY_KEYS,
    byte_view,
    in_hash_threads,
    raw_extent,
    read_range,
)
from virnucpro.ckpt.errors import one_line
from virnucpro.ckpt.layout import MANIFEST_NAME, MERGED_NAME, default_output, output_names
from virnucpro.ckpt.parts import PARTS_ATTR, check_parts

CHECKSUMS_ATTR = "dataset_sha256"
ROWS_ATTR = "row_datasets"
MAIN_ALIAS = "embeddings"
ROW_NAMES = ("ids", "lengths", "truncated")
SLICE_BYTES = 64 * 2**20
BLOCK_BYTES = 16 * 2**20
BLOCKS_PREFIX = "sha256-blocks"


class _Blocks:
    """A block digest being fed: the open block's hash, the finished blocks' digests
    (or the futures computing them), in order."""

    def __init__(self, header: bytes, block_bytes: int) -> None:
        self.header = header
        self.block_bytes = block_bytes
        self.leaves: list[Future[bytes] | bytes] = []
        self.open = hashlib.sha256()
        self.filled = 0

    def text(self) -> str:
        if self.filled:
            self.leaves.append(self.open.digest())
            self.open, self.filled = hashlib.sha256(), 0
        root = hashlib.sha256(self.header)
        for leaf in self.leaves:
            root.update(leaf if isinstance(leaf, bytes) else leaf.result())
        return f"{BLOCKS_PREFIX}:{self.block_bytes}:{root.hexdigest()}"


def _header(name: str, dtype: Any, shape: tuple[int, ...]) -> bytes:
    kind = "ids" if name == "ids" else np.dtype(dtype).str
    return f"{name}|{kind}|{tuple(int(s) for s in shape)}|".encode()


def _leaf(data: Any) -> bytes:
    return hashlib.sha256(data).digest()


class DatasetDigests:
    """Running digests per dataset; feed each dataset's rows in order, in any slices.

    Numeric datasets get block digests, strings one sha256 stream (module docstring);
    ``block_bytes=0``: every dataset one stream, as outputs before block digests.
    With ``max_pending_bytes`` whole blocks hash on up to ``HASH_THREADS`` background
    threads (hashlib releases the GIL), overlapping the merge's reads and writes; at
    most that many bytes of fed arrays are held waiting to be hashed. Do not change an
    array after feeding it.
    """

    def __init__(self, max_pending_bytes: int = 0, block_bytes: int | None = None) -> None:
        self._streams: dict[str, Any] = {}
        self._blocks: dict[str, _Blocks] = {}
        self._block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self._max_pending = max_pending_bytes
        self._pool = ThreadPoolExecutor(HASH_THREADS, "digests") if max_pending_bytes > 0 else None
        self._pending: deque[tuple[Future[bytes], int]] = deque()
        self._pending_bytes = 0

    def start(self, name: str, dtype: Any, shape: tuple[int, ...]) -> None:
        header = _header(name, dtype, shape)
        if name == "ids" or np.dtype(dtype).kind == "O" or not self._block_bytes:
            self._streams[name] = hashlib.sha256(header)
        else:
            self._blocks[name] = _Blocks(header, self._block_bytes)

    def update(self, name: str, values: np.ndarray) -> None:
        data = byte_view(values)
        if name in self._streams:
            self._streams[name].update(data)
            return
        blocks = self._blocks[name]
        at = 0
        while at < len(data):
            take = min(len(data) - at, blocks.block_bytes - blocks.filled)
            piece = data[at : at + take]
            if take == blocks.block_bytes:  # a whole block: off to a thread
                blocks.leaves.append(self._hash(piece))
            else:
                blocks.open.update(piece.data)
                blocks.filled += take
                if blocks.filled == blocks.block_bytes:
                    blocks.leaves.append(blocks.open.digest())
                    blocks.open, blocks.filled = hashlib.sha256(), 0
            at += take

    def update_ids(self, ids: Iterable[object]) -> None:
        self.update_strings("ids", ids)

    def update_strings(self, name: str, values: Iterable[object]) -> None:
        """Strings are hashed one by one (8-byte length, UTF-8 bytes)."""
        encoded = [str(i).encode("utf-8") for i in values]
        self._streams[name].update(b"".join(len(e).to_bytes(8, "little") + e for e in encoded))

    def hexdigests(self) -> dict[str, str]:
        self.close()
        texts = {name: blocks.text() for name, blocks in self._blocks.items()}
        texts.update({name: digest.hexdigest() for name, digest in self._streams.items()})
        return dict(sorted(texts.items()))

    def close(self) -> None:
        """Finish (or, after an error, drop) the pending hashing and stop the threads."""
        while self._pending:
            self._pending.popleft()[0].result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _hash(self, piece: np.ndarray) -> Future[bytes] | bytes:
        if self._pool is None:
            return _leaf(piece)
        while self._pending and self._pending_bytes + piece.nbytes > self._max_pending:
            future, done = self._pending.popleft()
            future.result()
            self._pending_bytes -= done
        future = self._pool.submit(_leaf, piece)
        self._pending.append((future, piece.nbytes))
        self._pending_bytes += piece.nbytes
        return future


def verify_output(target: Path, full: bool = True) -> str | None:
    """None when the merged output is whole, else one line saying what is damaged.

    ``target``: a run directory (its ``embeddings.h5`` is checked against its manifest)
    or an ``.h5`` file. Always checked: the file opens, every expected dataset is there
    with the shape the run implies, every per-token part is there. ``full`` also reads
    every dataset and part and compares its sha256 with the recorded one. An output
    written before digests were recorded is checked for structure only.
    """
    target = Path(target)
    path = target / MERGED_NAME if target.is_dir() else target
    if not path.is_file():
        return f"{path}: missing"
    run_manifest = _run_manifest(target) if target.is_dir() else None
    try:
        with h5py.File(path, "r") as f:
            return _check(f, path, run_manifest, full)
    except OSError as exc:
        return f"{path}: unreadable ({one_line(exc)})"
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        return f"{path}: damaged ({type(exc).__name__}: {one_line(exc)})"


def _run_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _check(
    f: h5py.File, path: Path, run_manifest: Mapping[str, Any] | None, full: bool
) -> str | None:
    attrs = {key: json.loads(value) for key, value in f.attrs.items()}
    for key in (*IDENTITY_KEYS, "num_sequences", "embed_dim"):
        if key not in attrs:
            return f"{path}: damaged (attribute {key} missing)"
    if run_manifest is not None:
        for key in (*IDENTITY_KEYS, "num_sequences", "embed_dim"):
            if key in run_manifest and attrs[key] != run_manifest[key]:
                return f"{path}: {key} {attrs[key]!r} differs from the run's {run_manifest[key]!r}"
    problem = _check_structure(f, path, attrs)
    if problem is None:
        problem = check_parts(path, f, attrs.get(PARTS_ATTR, {}), full)
    if problem is not None or not full or CHECKSUMS_ATTR not in attrs:
        return problem
    recorded = attrs[CHECKSUMS_ATTR]
    for name in sorted(recorded):
        if name not in f:
            return f"{path}: dataset {name} missing"
        if _digest_of(f[name], name, recorded[name]) != recorded[name]:
            return f"{path}: {name} is damaged (its sha256 differs from the recorded one)"
    return None


def _check_structure(f: h5py.File, path: Path, attrs: Mapping[str, Any]) -> str | None:
    total, width = int(attrs["num_sequences"]), int(attrs["embed_dim"])
    row_names = [*ROW_NAMES, *attrs.get(ROWS_ATTR, [])]
    present = sorted(n for n in _dataset_links(f) if n != MAIN_ALIAS)
    # Before parts (virnucpro-ckpt 0.2), per-token values were copied in input order, with offsets.
    copied = PARTS_ATTR not in attrs and any(is_offsets(n) for n in present)
    names = output_names(attrs["layers"], attrs["pooling"], merged=not copied)
    expected = sorted([*row_names, *names])
    if present != expected:
        missing = sorted(set(expected) - set(present))
        extra = sorted(set(present) - set(expected))
        return f"{path}: datasets missing {missing or 'none'}, unexpected {extra or 'none'}"
    shapes: dict[str, tuple[int, ...]] = {name: (total,) for name in row_names}
    for name in expected:
        if is_spans(name):
            shapes[name] = (total, 2)
        elif is_offsets(name):
            shapes[name] = (total + 1,)
        elif is_per_token(name) and copied:
            offsets = f[name + "_offsets"]
            tokens = int(offsets[-1]) if offsets.shape == (total + 1,) else -1
            shapes[name] = (tokens, width)
        elif is_per_token(name):
            problem = _check_spans(f, path, name, total)
            if problem is not None:
                return problem
            shapes[name] = (int(f["lengths"][()].sum()), width)
        elif name not in row_names:
            shapes[name] = (total, width)
    dtype = run_store_dtype(attrs)
    for name, shape in shapes.items():
        if f[name].shape != shape:
            return f"{path}: {name} has shape {f[name].shape}, expected {shape}"
        index = is_spans(name) or is_offsets(name)
        if name not in row_names and not index and f[name].dtype != dtype:
            return f"{path}: {name} is {f[name].dtype}, the run stores {dtype}"
    main = default_output(attrs["layers"], attrs["pooling"])
    if main is not None and (MAIN_ALIAS not in f or f[MAIN_ALIAS] != f[main]):
        return f"{path}: {MAIN_ALIAS} is not the same dataset as {main}"
    return None


def _check_spans(f: h5py.File, path: Path, name: str, total: int) -> str | None:
    """Each row's span is as long as the row and the spans tile the values: no token
    row read by two input rows, none left out."""
    spans, stored_lengths = f[name + SPANS_SUFFIX], f["lengths"]
    if spans.shape != (total, 2) or stored_lengths.shape != (total,):
        return f"{path}: {name}_spans has shape {spans.shape}, expected ({total}, 2)"
    starts, stops = spans[()].T
    lengths = stored_lengths[()]
    if not np.array_equal(stops - starts, lengths):
        return f"{path}: {name}_spans do not match the rows' lengths"
    # Spans as long as the values, inside them and disjoint tile them exactly.
    firsts, lasts = np.sort(starts), np.sort(stops)
    inside = not firsts.size or (firsts[0] >= 0 and lasts[-1] <= int(lengths.sum()))
    if not inside or np.any(firsts[1:] < lasts[:-1]):
        return f"{path}: {name}_spans overlap or reach past the values"
    return None


def _dataset_links(f: h5py.File) -> list[str]:
    """Every name that leads to a dataset (an alias and its target both count)."""
    names: list[str] = []
    f.visit_links(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
    return names


def _digest_of(ds: h5py.Dataset, name: str, recorded: str) -> str:
    """The dataset's digest in the form ``recorded`` has (block or single stream)."""
    if recorded.startswith(f"{BLOCKS_PREFIX}:"):
        block_bytes = int(recorded.split(":")[1])
        extent = raw_extent(ds)
        if extent is not None and block_bytes > 0:
            return _raw_blocks_digest(ds, name, block_bytes, *extent)
        digests = DatasetDigests(max_pending_bytes=2 * SLICE_BYTES, block_bytes=block_bytes)
    else:
        digests = DatasetDigests(block_bytes=0)
    digests.start(name, ds.dtype, ds.shape)
    for piece in _slices(ds):
        if ds.dtype.kind == "O":
            digests.update_strings(name, piece.tolist())
        else:
            digests.update(name, piece)
    return digests.hexdigests()[name]


def file_blocks_digest(ds: h5py.Dataset, name: str) -> str:
    """The block digest of a plain dataset as its file holds it (what the merge records
    for rows written in place while the run computed)."""
    extent = raw_extent(ds)
    if extent is None:
        raise ValueError(f"{name} is not stored plain: it cannot be hashed from the file")
    return _raw_blocks_digest(ds, name, BLOCK_BYTES, *extent)


def _raw_blocks_digest(
    ds: h5py.Dataset, name: str, block_bytes: int, offset: int, size: int
) -> str:
    """Every block read straight from the file and hashed, on ``HASH_THREADS`` threads."""
    blocks = _Blocks(_header(name, ds.dtype, ds.shape), block_bytes)
    with open(ds.file.filename, "rb", buffering=0) as raw:

        def leaf(start: int) -> bytes:
            digest = hashlib.sha256()
            for piece in read_range(raw, offset + start, min(block_bytes, size - start)):
                digest.update(piece.data)
            return digest.digest()

        blocks.leaves = list(in_hash_threads(leaf, range(0, size, block_bytes)))
    return blocks.text()


def _slices(ds: h5py.Dataset) -> Iterator[np.ndarray]:
    reader = ds.asstr() if ds.dtype.kind == "O" else ds
    if not ds.shape or ds.shape[0] == 0:
        yield reader[()]
        return
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * max(1, ds.dtype.itemsize))
    step = max(1, SLICE_BYTES // row_bytes)
    for start in range(0, ds.shape[0], step):
        yield reader[start : start + step]
