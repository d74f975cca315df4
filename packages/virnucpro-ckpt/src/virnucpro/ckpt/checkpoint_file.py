"""One checkpoint as one HDF5 file: write it atomically, validate it, read its header.

Every attribute is stored as JSON text, so a value reads back exactly as written
(``None`` included) and nothing is ever unpickled (lesson 10).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import h5py
import numpy as np

from virnucpro.ckpt.batch import CheckpointBatch, check_offsets, is_offsets, run_store_dtype
from virnucpro.ckpt.errors import InvalidCheckpointError, one_line
from virnucpro.ckpt.layout import CHECKPOINT_NAME, RANK_DIR_NAME, output_names, temp_path
from virnucpro.ckpt.safe_write import HDF5_OVERHEAD_BYTES, write_hdf5_atomically

FORMAT_VERSION = 1
ROW_DATASETS = ("indices", "ids", "lengths", "truncated")
# Manifest keys a checkpoint must agree with to belong to the run.
IDENTITY_KEYS = (
    "input_fingerprint",
    "model",
    "model_checksum",
    "random_weights",
    "seed",
    "layers",
    "pooling",
    "precision",
    "max_length",
)
RUN_KEYS = (*IDENTITY_KEYS, "versions", "embed_dim")
WRITE_KEYS = (
    "rank",
    "world_size",
    "session",
    "sequence",
    "trigger_reason",
    "created_at",
    "written_at",
    "gpu_memory_allocated_bytes",
    "gpu_memory_peak_bytes",
)
T = TypeVar("T")
R = TypeVar("R")
HASH_ROWS = 65536
HASH_THREADS = min(16, os.cpu_count() or 1)
"""sha256 runs at about 1 GB/s per core: on a 16-core H200 host, 16 GB of checkpoints in
the page cache hashed at 7.4 GB/s on 8 threads and 11.1 GB/s on 16."""
RAW_READ_BYTES = 16 * 2**20


@dataclass(frozen=True)
class CheckpointInfo:
    """What a valid checkpoint holds: its header and its number of rows."""

    path: Path
    rank: int
    session: str
    sequence: int
    num_sequences: int
    attrs: dict[str, Any]


def write_checkpoint_file(path: Path, batch: CheckpointBatch, attrs: Mapping[str, Any]) -> int:
    """Write ``batch`` (rows sorted by input index) to ``path`` atomically; return bytes.

    The file is built under a temporary name, fsynced, renamed into place and the
    directory fsynced, so a kill at any moment leaves either no file or a whole one.
    A full disk raises DiskFullError and leaves no temporary file.
    """
    batch = batch.sorted_by_index()
    tmp = temp_path(path)
    header = dict(attrs)
    header["format_version"] = FORMAT_VERSION
    header["num_sequences"] = len(batch)
    header["data_checksum"] = batch_checksum(batch)

    def fill(f: h5py.File) -> None:
        f.create_dataset("indices", data=batch.indices)
        f.create_dataset(
            "ids", data=np.array(batch.ids, dtype=object), dtype=h5py.string_dtype("utf-8")
        )
        f.create_dataset("lengths", data=batch.lengths)
        f.create_dataset("truncated", data=batch.truncated)
        for name, value in batch.outputs.items():
            f.create_dataset(name, data=value)
        for key, value in header.items():
            f.attrs[key] = json.dumps(value)

    needed = batch.nbytes + sum(len(i) + 16 for i in batch.ids) + HDF5_OVERHEAD_BYTES
    return write_hdf5_atomically(path, tmp, fill, needed)


def batch_checksum(batch: CheckpointBatch) -> str:
    """sha256 of every dataset, in a fixed order, as the file will hold it."""
    arrays: dict[str, Any] = {
        "indices": batch.indices,
        "ids": batch.ids,
        "lengths": batch.lengths,
        "truncated": batch.truncated,
        **batch.outputs,
    }
    digest = hashlib.sha256()
    for name in checksum_order(arrays):
        value = arrays[name]
        if name == "ids":
            _hash_ids(digest, value)
        else:
            _hash_array(digest, name, value, iter([value]))
    return digest.hexdigest()


def file_checksum(f: h5py.File) -> str:
    """sha256 of a checkpoint file's datasets, read in bounded slices.

    Contiguous numeric datasets (a per-token run's tens of GB) are read as the file's
    raw bytes, which are the array's own: h5py serialises every read behind one lock,
    so checking files in parallel threads went at one read's pace; raw reads and
    sha256 both release the GIL."""
    digest = hashlib.sha256()
    with open(f.filename, "rb", buffering=0) as raw:
        for name in checksum_order(dataset_names(f)):
            ds = f[name]
            if name == "ids":
                _hash_ids(digest, list(ds.asstr()[()]))
            else:
                _hash_array(digest, name, ds, _raw_slices(raw, ds) or _slices(ds))
    return digest.hexdigest()


def in_hash_threads(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``work`` over ``items`` side by side, results in order: files are checked at the
    disk's pace, not one core's sha256 pace (raw reads and hashing release the GIL)."""
    with ThreadPoolExecutor(min(HASH_THREADS, max(1, len(items)))) as pool:
        return list(pool.map(work, items))


def _raw_slices(raw: BinaryIO, ds: h5py.Dataset) -> Iterator[np.ndarray] | None:
    extent = raw_extent(ds)
    return None if extent is None else read_range(raw, *extent)


def raw_extent(ds: h5py.Dataset) -> tuple[int, int] | None:
    """(file offset, bytes) of the dataset's values when HDF5 stores them as they are in
    memory (contiguous, unfiltered, native byte order), so they can be read raw; else
    None."""
    offset = ds.id.get_offset()
    size = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    plain = ds.chunks is None and ds.dtype.kind in "fiub" and ds.dtype.isnative
    if offset is None or not plain or ds.id.get_storage_size() != size:
        return None
    return offset, size


def read_range(raw: BinaryIO, offset: int, size: int) -> Iterator[np.ndarray]:
    """``size`` bytes from ``offset`` in pieces of one reused buffer (each piece is
    valid until the next is read)."""
    buffer = memoryview(bytearray(min(size, RAW_READ_BYTES)))
    done = 0
    while done < size:
        count = min(len(buffer), size - done)
        filled = 0
        while filled < count:  # a network filesystem may return less than asked
            got = os.preadv(raw.fileno(), [buffer[filled:count]], offset + done + filled)
            if got == 0:
                raise OSError(f"{raw.name}: ends before byte {offset + done + filled}")
            filled += got
        yield np.frombuffer(buffer[:count], dtype=np.uint8)
        done += count


def checksum_order(names: Any) -> list[str]:
    outputs = sorted(n for n in names if n not in ROW_DATASETS)
    return [*ROW_DATASETS, *outputs]


def dataset_names(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _slices(ds: h5py.Dataset) -> Iterator[np.ndarray]:
    if ds.shape[0] == 0:
        yield ds[()]
        return
    for start in range(0, ds.shape[0], HASH_ROWS):
        yield ds[start : start + HASH_ROWS]


def _hash_array(digest: Any, name: str, value: Any, pieces: Iterator[np.ndarray]) -> None:
    digest.update(f"{name}|{np.dtype(value.dtype).str}|{tuple(value.shape)}|".encode())
    for piece in pieces:
        digest.update(byte_view(piece))


def byte_view(values: np.ndarray) -> np.ndarray:
    """An array's own bytes, flat, to hash (a copy only if it is not contiguous): a
    ``.tobytes()`` copied each 1 GiB checkpoint whole just to hash it."""
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)


def _hash_ids(digest: Any, ids: list[str]) -> None:
    encoded = [i.encode("utf-8") for i in ids]
    digest.update(f"ids|{len(encoded)}|".encode())
    digest.update(np.array([len(e) for e in encoded], dtype=np.int64).tobytes())
    digest.update(b"".join(encoded))


def read_attrs(f: h5py.File) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in f.attrs.items()}


def parse_checkpoint_path(path: Path) -> tuple[int, str, int]:
    """``(rank, session, sequence)`` from ``.../rank_{r}/{session}_{seq}.h5``."""
    name_match = CHECKPOINT_NAME.match(path.name)
    rank_match = RANK_DIR_NAME.match(path.parent.name)
    if not name_match or not rank_match:
        raise InvalidCheckpointError(f"{path}: not a checkpoint name (rank_R/SESSION_SEQ.h5)")
    return int(rank_match["rank"]), name_match["session"], int(name_match["seq"])


def validate_checkpoint_hdf5(
    path: Path,
    manifest: Mapping[str, Any] | None = None,
    verify_checksum: bool = True,
    standing_for: Path | None = None,
) -> CheckpointInfo:
    """Check that ``path`` is a whole checkpoint of this run; raise InvalidCheckpointError.

    Checks: the name, that HDF5 opens it, the header, that every dataset has the row
    count, dtypes and widths the run expects, indices strictly increasing and in range,
    per-token offsets consistent with lengths, the header agrees with ``manifest``,
    and (``verify_checksum``) the data checksum. ``standing_for``: the checkpoint path
    whose name a file under another name must carry (an output's part).
    """
    path = Path(path)
    rank, session, sequence = parse_checkpoint_path(Path(standing_for or path))
    try:
        with h5py.File(path, "r") as f:
            attrs = _check_header(f, path, rank, session, sequence, manifest)
            _check_rows(f, path, attrs, manifest)
            if verify_checksum and file_checksum(f) != attrs["data_checksum"]:
                raise InvalidCheckpointError(f"{path}: data checksum does not match")
    except InvalidCheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InvalidCheckpointError(f"{path}: unreadable ({one_line(exc)})") from None
    return CheckpointInfo(path, rank, session, sequence, attrs["num_sequences"], attrs)


def _check_header(
    f: h5py.File,
    path: Path,
    rank: int,
    session: str,
    sequence: int,
    manifest: Mapping[str, Any] | None,
) -> dict[str, Any]:
    attrs = read_attrs(f)
    needed = (*RUN_KEYS, *WRITE_KEYS, "format_version", "num_sequences", "data_checksum")
    missing = [k for k in needed if k not in attrs]
    if missing:
        raise InvalidCheckpointError(f"{path}: header lacks {', '.join(missing)}")
    if attrs["format_version"] != FORMAT_VERSION:
        raise InvalidCheckpointError(f"{path}: format version {attrs['format_version']}")
    where = (attrs["rank"], attrs["session"], attrs["sequence"])
    if where != (rank, session, sequence):
        raise InvalidCheckpointError(f"{path}: header says rank/session/seq {where}")
    if manifest is not None:
        for key in IDENTITY_KEYS:
            if attrs[key] != manifest.get(key):
                raise InvalidCheckpointError(
                    f"{path}: {key} {attrs[key]!r} differs from the run's {manifest.get(key)!r}"
                )
    return attrs


def _check_rows(
    f: h5py.File, path: Path, attrs: Mapping[str, Any], manifest: Mapping[str, Any] | None
) -> None:
    n = attrs["num_sequences"]
    expected = output_names(attrs["layers"], attrs["pooling"])
    present = sorted(x for x in dataset_names(f) if x not in ROW_DATASETS)
    if present != expected:
        raise InvalidCheckpointError(f"{path}: outputs {present}, expected {expected}")
    for name in ROW_DATASETS:
        if name not in f or f[name].shape != (n,):
            raise InvalidCheckpointError(f"{path}: {name} does not have {n} rows")
    if f["indices"].dtype != np.int64 or f["lengths"].dtype != np.int64:
        raise InvalidCheckpointError(f"{path}: indices and lengths must be int64")
    indices = f["indices"][()]
    if n and (np.any(np.diff(indices) <= 0) or indices[0] < 0):
        raise InvalidCheckpointError(f"{path}: indices not strictly increasing")
    total = None if manifest is None else manifest.get("num_sequences")
    if n and total is not None and indices[-1] >= total:
        raise InvalidCheckpointError(f"{path}: index {int(indices[-1])} beyond {total} inputs")
    lengths = f["lengths"][()]
    width = attrs["embed_dim"]
    # The run's dtype decides (a header of another dtype belongs to another run).
    dtype = run_store_dtype(attrs if manifest is None else manifest)
    for name in expected:
        ds = f[name]
        if is_offsets(name):
            try:
                check_offsets(name, ds[()], lengths)
            except ValueError as exc:
                raise InvalidCheckpointError(f"{path}: {exc}") from None
            continue
        rows = int(lengths.sum()) if name.endswith("/per_token") else n
        if ds.dtype != dtype or ds.shape != (rows, width):
            raise InvalidCheckpointError(
                f"{path}: {name} is {ds.dtype} {ds.shape}, expected {dtype} ({rows}, {width})"
            )
