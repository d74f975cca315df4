"""Stream every checkpoint into RUN_DIR/embeddings.h5 in input order, in bounded memory.

Bookkeeping is O(N) small integers (which file holds each row); pooled embeddings and
ids pass through a buffer of at most ``memory_budget_bytes``. Each checkpoint's rows are
sorted by input index, so the rows of an output chunk are one contiguous slice per file.
Per-token values are not copied: the checkpoints become the output's parts
(:mod:`virnucpro.ckpt.parts`) and the merged file maps them.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from virnucpro.ckpt.batch import (
    SPANS_SUFFIX,
    is_per_token,
    is_spans,
    offsets_from_lengths,
    run_store_dtype,
)
from virnucpro.ckpt.checkpoint_file import in_hash_threads, validate_checkpoint_hdf5
from virnucpro.ckpt.errors import InvalidCheckpointError, MergeError
from virnucpro.ckpt.layout import (
    CHECKPOINT_NAME,
    MERGED_NAME,
    TEMP_SUFFIX,
    default_output,
    iter_rank_dirs,
    new_session_id,
    output_names,
)
from virnucpro.ckpt.manifest import read_manifest
from virnucpro.ckpt.parts import PARTS_ATTR, publish_parts
from virnucpro.ckpt.safe_write import HDF5_OVERHEAD_BYTES, check_space, write_hdf5_atomically
from virnucpro.ckpt.space import copied_parts_bytes
from virnucpro.ckpt.storage import run_compression, storage
from virnucpro.ckpt.verify import (
    CHECKSUMS_ATTR,
    MAIN_ALIAS,
    ROW_NAMES,
    ROWS_ATTR,
    DatasetDigests,
    file_blocks_digest,
)

if TYPE_CHECKING:
    from virnucpro.ckpt.assembly import OutputAssembly

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 256 * 2**20
MAX_OPEN_FILES = 64
ROW_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_NAMES = frozenset({*ROW_NAMES, MAIN_ALIAS, "indices"})


@dataclass
class _Source:
    path: Path
    indices: np.ndarray
    offsets: np.ndarray  # per-token row offsets, from the file's lengths


def merge_checkpoints(
    run_dir: Path,
    verify_checksum: bool = True,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    rows: Mapping[str, np.ndarray] | None = None,
    assembly: OutputAssembly | None = None,
) -> Path:
    """Write ``RUN_DIR/embeddings.h5`` atomically; raise MergeError on any defect.

    Every checkpoint must be valid (run resume first to move bad files aside), and
    every input index must be held by exactly one of them: a missing or duplicated
    row is named in the error. ``rows``: more per-row datasets (N values each, input
    order; strings or numbers), written beside ``lengths`` with their digests. Too
    little free space raises DiskFullError (checked first, and again if the disk
    fills while writing); no temporary file is left. A run with per-token outputs
    also gets its parts, ``RUN_DIR/embeddings_per_token/``, which the file maps.
    ``assembly``: the file begun while the run computed (:mod:`virnucpro.ckpt.assembly`),
    finished here: only the rows it does not hold yet are written.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    total = int(manifest["num_sequences"])
    extra = _row_datasets(rows or {}, total)
    names = output_names(manifest["layers"], manifest["pooling"], merged=True)
    if assembly is not None and (assembly.error is not None or not _fits(assembly, manifest)):
        assembly.discard()  # its file would take the space this merge needs
        assembly = None
    checked = assembly.verified if assembly is not None else None
    sources = _load_sources(run_dir, manifest, verify_checksum, checked)
    lengths, truncated = _locate_rows(sources, total)
    final = run_dir / MERGED_NAME
    tmp = run_dir / f".{MERGED_NAME}.{new_session_id()}{TEMP_SUFFIX}"
    needed = merged_size(manifest, names, lengths, sources) + _rows_size(extra)
    if assembly is not None:
        late = assembly.complete((source.path, source.indices) for source in sources)
        log.debug("merge: %d of %d rows were in place before the last batch", total - late, total)
        tmp = assembly.path
        needed -= len(assembly.names) * total * assembly.row_bytes
    check_space(final, needed + copied_parts_bytes(manifest, lengths))
    parts: dict[str, str] = {}
    if any(is_per_token(n) for n in names):
        # An earlier output maps the parts about to be replaced: it goes first.
        final.unlink(missing_ok=True)
        parts = publish_parts(run_dir, [s.path for s in sources], run_compression(manifest))

    placed = list(assembly.names) if assembly is not None else []

    def fill(out: h5py.File) -> None:
        with _FileCache() as cache:
            _write_merged(
                out,
                manifest,
                names,
                sources,
                lengths,
                truncated,
                parts,
                cache,
                memory_budget_bytes,
                placed,
            )
        _write_rows(out, extra)

    write_hdf5_atomically(final, tmp, fill, needed, existing=assembly is not None)
    return final


def _fits(assembly: OutputAssembly, manifest: Mapping[str, Any]) -> bool:
    """The assembly was begun for this very run (an edited manifest gets a fresh merge)."""
    return all(assembly.manifest.get(key) == value for key, value in manifest.items())


def _row_datasets(rows: Mapping[str, np.ndarray], total: int) -> dict[str, np.ndarray]:
    """The per-row arrays as they will be stored; a wrong name or length is refused."""
    checked = {}
    for name, values in sorted(rows.items()):
        array = np.asarray(values)
        taken = name in RESERVED_NAMES or name.startswith("layer_")
        if taken or not ROW_DATASET_NAME.match(name):
            raise MergeError(f"per-row dataset name {name!r} is taken or not a plain name")
        if array.shape != (total,):
            raise MergeError(f"per-row dataset {name} has shape {array.shape}, not ({total},)")
        if array.dtype.kind in "OUS":
            array = np.array([str(v) for v in array.tolist()], dtype=object)
        checked[name] = array
    return checked


def _rows_size(rows: Mapping[str, np.ndarray]) -> int:
    return sum(
        sum(len(v) + 16 for v in a.tolist()) if a.dtype.kind == "O" else a.nbytes
        for a in rows.values()
    )


def _write_rows(out: h5py.File, rows: Mapping[str, np.ndarray]) -> None:
    """Write the per-row datasets, their digests added to the recorded ones."""
    digests = DatasetDigests()
    for name, values in rows.items():
        if values.dtype.kind == "O":
            ds = out.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))
            digests.start(name, ds.dtype, ds.shape)
            digests.update_strings(name, values.tolist())
        else:
            ds = out.create_dataset(name, data=values)
            digests.start(name, ds.dtype, ds.shape)
            digests.update(name, values)
    recorded = json.loads(out.attrs[CHECKSUMS_ATTR])
    out.attrs[ROWS_ATTR] = json.dumps(sorted(rows))
    # Written last, as the merge's own digests: a file carrying them was written whole.
    out.attrs[CHECKSUMS_ATTR] = json.dumps(
        dict(sorted({**recorded, **digests.hexdigests()}.items()))
    )


def merged_size(
    manifest: Mapping[str, Any], names: list[str], lengths: np.ndarray, sources: list[_Source]
) -> int:
    """About how many bytes the merged file takes: the pooled outputs, the per-token
    spans, the row datasets, the ids (their bytes in the checkpoints) and HDF5's own
    overhead."""
    width = int(manifest["embed_dim"])
    itemsize = run_store_dtype(manifest).itemsize
    rows = lengths.shape[0]
    values = sum(
        16 * rows if is_spans(name) else rows * width * itemsize
        for name in names
        if not is_per_token(name)
    )
    ids = 0
    for source in sources:
        with h5py.File(source.path, "r") as f:
            ids += f["ids"].id.get_storage_size() + 2 * source.indices.shape[0] * 16
    return values + rows * 9 + ids + HDF5_OVERHEAD_BYTES


def _load_sources(
    run_dir: Path,
    manifest: Mapping[str, Any],
    verify_checksum: bool,
    checked: Callable[[Path], bool] | None = None,
) -> list[_Source]:
    """Every finished checkpoint, validated; ``checked``: files already checksummed in
    this process (by an assembly), whose checksum is not read again."""
    paths = []
    for _rank, directory in iter_rank_dirs(run_dir):
        for path in sorted(directory.iterdir()):
            if not CHECKPOINT_NAME.match(path.name):
                raise MergeError(f"{path}: not a finished checkpoint; run resume to move it aside")
            paths.append(path)
    return in_hash_threads(
        lambda path: _source(path, manifest, verify_checksum and not (checked and checked(path))),
        paths,
    )


def _source(path: Path, manifest: Mapping[str, Any], verify_checksum: bool) -> _Source:
    try:
        validate_checkpoint_hdf5(path, manifest, verify_checksum)
    except InvalidCheckpointError as exc:
        raise MergeError(f"{exc}; run resume to move it aside") from None
    with h5py.File(path, "r") as f:
        indices = f["indices"][()]
        offsets = offsets_from_lengths(f["lengths"][()])
    return _Source(path, indices, offsets)


def _locate_rows(sources: list[_Source], total: int) -> tuple[np.ndarray, np.ndarray]:
    """Check each input index is held exactly once; return lengths and truncation flags."""
    owner = np.full(total, -1, dtype=np.int32)
    lengths = np.zeros(total, dtype=np.int64)
    truncated = np.zeros(total, dtype=bool)
    for number, source in enumerate(sources):
        held = owner[source.indices]
        if (held >= 0).any():
            at = int(np.flatnonzero(held >= 0)[0])
            index = int(source.indices[at])
            other = sources[held[at]].path
            raise MergeError(f"row {index} is duplicated: it is in {other} and {source.path}")
        owner[source.indices] = number
        lengths[source.indices] = np.diff(source.offsets)
        with h5py.File(source.path, "r") as f:
            truncated[source.indices] = f["truncated"][()]
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        shown = ", ".join(str(int(i)) for i in missing[:10])
        raise MergeError(
            f"{missing.size} of {total} rows are missing (input indices {shown}"
            f"{', ...' if missing.size > 10 else ''}); run resume to compute them"
        )
    return lengths, truncated


def _write_merged(
    out: h5py.File,
    manifest: Mapping[str, Any],
    names: list[str],
    sources: list[_Source],
    lengths: np.ndarray,
    truncated: np.ndarray,
    parts: Mapping[str, str],
    cache: _FileCache,
    budget: int,
    placed: list[str],
) -> None:
    # Half the budget for the chunk being copied, half for the one still being hashed.
    digests = DatasetDigests(max_pending_bytes=max(1, budget // 2))
    try:
        _fill_merged(
            out, manifest, names, sources, lengths, truncated, parts, cache, budget, digests, placed
        )
    finally:
        digests.close()


def _fill_merged(
    out: h5py.File,
    manifest: Mapping[str, Any],
    names: list[str],
    sources: list[_Source],
    lengths: np.ndarray,
    truncated: np.ndarray,
    parts: Mapping[str, str],
    cache: _FileCache,
    budget: int,
    digests: DatasetDigests,
    placed: list[str],
) -> None:
    """``placed``: pooled datasets already in ``out`` with every row in place (an
    assembly's); their digests are read from the file."""
    total = lengths.shape[0]
    width = int(manifest["embed_dim"])
    dtype = run_store_dtype(manifest)
    pooled = [n for n in names if not is_per_token(n) and not is_spans(n)]
    per_token = [n for n in names if is_per_token(n)]
    ids = out.create_dataset("ids", shape=(total,), dtype=h5py.string_dtype("utf-8"))
    digests.start("ids", ids.dtype, ids.shape)
    whole = {"lengths": lengths, "truncated": truncated}
    if per_token:
        spans = _spans(sources, total)
        whole.update({name + SPANS_SUFFIX: spans for name in per_token})
    targets = {}
    for name in pooled:
        if name in placed:
            continue
        layout = storage((total, width), dtype, run_compression(manifest), per_token=False)
        targets[name] = out.create_dataset(name, shape=(total, width), dtype=dtype, **layout)
    for name, data in whole.items():
        digests.start(name, data.dtype, data.shape)
        digests.update(name, data)
        out.create_dataset(name, data=data)
    for name, ds in targets.items():
        digests.start(name, ds.dtype, ds.shape)
    for start, stop in _chunks(total, width * dtype.itemsize * max(1, len(targets)), budget // 2):
        _copy_chunk(start, stop, sources, targets, ids, cache, digests)
    from_file = {name: file_blocks_digest(out[name], name) for name in placed}
    for name in per_token:
        _map_parts(out, name, sources, list(parts), width, dtype)
    main = default_output(manifest["layers"], manifest["pooling"])
    if main is not None:
        out["embeddings"] = out[main]
    for key, value in manifest.items():
        out.attrs[key] = json.dumps(value)
    if parts:
        out.attrs[PARTS_ATTR] = json.dumps(dict(parts))
    # Written last: a file carrying digests was written to the end.
    out.attrs[CHECKSUMS_ATTR] = json.dumps(
        dict(sorted({**digests.hexdigests(), **from_file}.items()))
    )


def _spans(sources: list[_Source], total: int) -> np.ndarray:
    """Where each input row's per-token values lie among the parts, laid end to end in
    source order: ``[start, stop)`` per row."""
    spans = np.zeros((total, 2), dtype=np.int64)
    base = 0
    for source in sources:
        spans[source.indices, 0] = base + source.offsets[:-1]
        spans[source.indices, 1] = base + source.offsets[1:]
        base += int(source.offsets[-1])
    return spans


def _map_parts(
    out: h5py.File,
    name: str,
    sources: list[_Source],
    parts: list[str],
    width: int,
    dtype: np.dtype,
) -> None:
    """``name`` as a virtual dataset: part after part, each part's own rows of it. A
    value whose part is missing reads as NaN, never as a plausible zero (the reader and
    the check refuse a file with a missing part before that)."""
    tokens = [int(source.offsets[-1]) for source in sources]
    layout = h5py.VirtualLayout(shape=(sum(tokens), width), dtype=dtype)
    base = 0
    for part, count in zip(parts, tokens, strict=True):
        if count:
            layout[base : base + count] = h5py.VirtualSource(part, name, shape=(count, width))
        base += count
    out.create_virtual_dataset(name, layout, fillvalue=np.nan)


def _chunks(total: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Row ranges whose buffers fit the budget (at least one row each)."""
    step = max(1, budget // max(1, row_bytes))
    return [(start, min(total, start + step)) for start in range(0, total, step)]


def _copy_chunk(
    start: int,
    stop: int,
    sources: list[_Source],
    targets: dict[str, h5py.Dataset],
    ids: h5py.Dataset,
    cache: _FileCache,
    digests: DatasetDigests,
) -> None:
    buffers = {
        name: np.empty((stop - start, ds.shape[1]), dtype=ds.dtype) for name, ds in targets.items()
    }
    id_buffer = np.empty(stop - start, dtype=object)
    for source in sources:
        lo, hi = np.searchsorted(source.indices, [start, stop])
        if lo == hi:
            continue
        f = cache.open(source.path)
        where = source.indices[lo:hi] - start
        id_buffer[where] = f["ids"].asstr()[lo:hi]
        for name, buffer in buffers.items():
            buffer[where] = f[name][lo:hi]
    ids[start:stop] = id_buffer
    digests.update_ids(id_buffer)
    for name, buffer in buffers.items():
        digests.update(name, buffer)
        targets[name][start:stop] = buffer


class _FileCache:
    """A few checkpoint files kept open, least recently used closed first."""

    def __init__(self) -> None:
        self._open: OrderedDict[Path, h5py.File] = OrderedDict()

    def open(self, path: Path) -> h5py.File:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        if len(self._open) >= MAX_OPEN_FILES:
            self._open.popitem(last=False)[1].close()
        handle = h5py.File(path, "r")
        self._open[path] = handle
        return handle

    def __enter__(self) -> _FileCache:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()
