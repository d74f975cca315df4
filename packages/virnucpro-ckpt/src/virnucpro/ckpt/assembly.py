"""The merged output's pooled rows written while the run computes, not after it.

The merge after the last batch is bound by the disk, not the CPU: 1 GB of mean rows took
3 s to write and sync on an H200 host's disk (0.31-0.37 GB/s, `benchmarks/bench_merge.py`),
with the GPU idle. So the lead polls the run's checkpoint folders while the run goes on,
checks each finished checkpoint (its checksum, as the merge would) and writes its pooled
rows straight to their places in the output being built: the writes reach the disk
while the GPU works, and the merge writes only the ids, the small per-row datasets and
the rows of the checkpoints that landed last.

On the local filesystems that write in place (`MAPPABLE_FILESYSTEMS`) rows reach the
file through a mapping of it, one numpy scatter per dataset and checkpoint, which runs
without the GIL: a packed plan spreads a checkpoint's rows over the whole input, and a
write per run of consecutive rows (about 9,500 per 50 MB checkpoint) takes the GIL back
after each call, so beside a main thread busy in Python the assembly fell behind
(`benchmarks/bench_assembly_gil.py`). The datasets' blocks are reserved when the file
is made (fallocate), so a write through the mapping cannot meet a full disk (that would
kill the process). Elsewhere (network and copy-on-write filesystems, or blocks that
cannot be reserved) the rows are written call by call, which fails with an error the
merge falls back from, never with a signal.

Pooled datasets stored as they are in memory (no compression) are assembled; anything
else is merged as before. The file is a temporary file of this session, locked while
its process lives: if the process dies it is removed at the next start
(`stale.remove_stale_temporaries`). A row's bytes
always come from the checkpoint the merge takes it from: each row remembers which
checkpoint wrote it, and the merge writes again the rows of any checkpoint that was not
assembled, was replaced, or lost a row to another file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from virnucpro.ckpt.batch import is_per_token, is_spans, run_store_dtype
from virnucpro.ckpt.checkpoint_file import (
    byte_view,
    raw_extent,
    read_range,
    validate_checkpoint_hdf5,
)
from virnucpro.ckpt.errors import InvalidCheckpointError
from virnucpro.ckpt.layout import (
    CHECKPOINT_NAME,
    MERGED_NAME,
    PER_TOKEN,
    TEMP_SUFFIX,
    iter_rank_dirs,
    new_session_id,
    output_names,
)
from virnucpro.ckpt.manifest import read_manifest
from virnucpro.ckpt.safe_write import abandon, check_space, create_unbuffered, disk_full_error
from virnucpro.ckpt.storage import run_compression

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the run's folders are looked at for finished checkpoints."""

Identity = tuple[int, int, int]

MAPPABLE_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
"""Local filesystems that write reserved blocks in place, where a write through a
mapping cannot meet a full disk. Elsewhere rows are written call by call: a
copy-on-write filesystem (btrfs, zfs, also under overlay) needs new space for every
write, and a network one a server for every page it gives back, and either failing
inside a mapping kills the process (SIGBUS) instead of raising an error. A local disk
failing to read back a page kills it the same way."""

_KEEP_SIZE = 1
"""fallocate's FALLOC_FL_KEEP_SIZE: the datasets lie inside the file HDF5 made."""


def assembled_names(manifest: Mapping[str, Any]) -> list[str]:
    """The merged file's pooled datasets (what an assembly fills)."""
    names = output_names(manifest["layers"], manifest["pooling"], merged=True)
    return [n for n in names if not is_per_token(n) and not is_spans(n)]


class OutputAssembly:
    """A temporary merged file whose pooled datasets are filled checkpoint by checkpoint.

    ``start()`` polls the run's checkpoints on a thread until ``stop()``; the merge
    (``merge_checkpoints(..., assembly=)``) finishes the file and publishes it;
    ``discard()`` removes it if no merge did.
    """

    def __init__(self, run_dir: Path, manifest: Mapping[str, Any], mapped: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.manifest = dict(manifest)
        self.names = assembled_names(manifest)
        # As the merge: a per-token run's checkpoints are hashed once, by the output's
        # check, not read whole here first for the few pooled rows.
        self.checksums = PER_TOKEN not in manifest["pooling"]
        self.path = self.run_dir / f".{MERGED_NAME}.{new_session_id()}{TEMP_SUFFIX}"
        total, width = int(manifest["num_sequences"]), int(manifest["embed_dim"])
        dtype = run_store_dtype(manifest)
        self.row_bytes = width * dtype.itemsize
        check_space(self.path, total * self.row_bytes * len(self.names))
        self.offsets = _create(self.path, self.names, (total, width), dtype)
        self.owner = np.full(total, -1, dtype=np.int32)
        self.assembled: dict[Path, tuple[Identity, int]] = {}
        self.rejected: dict[Path, Identity] = {}
        self.error: BaseException | None = None
        self._fd = os.open(self.path, os.O_RDWR)
        # Held while this process lives: a scan for stale temporaries leaves the file.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="virnucpro-assembly", daemon=True)
        self.mapped = mapped
        try:
            for name in self.names if mapped else ():
                _reserve(self._fd, self.offsets[name], total * self.row_bytes)
        except UnreservableError as exc:
            if exc.errno == errno.ENOSPC:
                self.discard()
                raise disk_full_error(self.path, total * self.row_bytes * len(self.names)) from None
            log.debug("rows written call by call: %s", exc)
            self.mapped = False

    @classmethod
    def for_run(cls, run_dir: Path) -> OutputAssembly | None:
        """An assembly for this run (mapped where its filesystem allows), or None where
        there is nothing it can fill: no pooled output, compressed storage, no rows."""
        manifest = read_manifest(run_dir)
        plain = run_compression(manifest) == "none"
        if not plain or not assembled_names(manifest) or not int(manifest["num_sequences"]):
            return None
        return cls(run_dir, manifest, mapped=filesystem_type(run_dir) in MAPPABLE_FILESYSTEMS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def discard(self) -> None:
        """Stop, and remove the file unless a merge published it."""
        self.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        abandon(None, self.path)

    def verified(self, path: Path) -> bool:
        """Whether ``path`` is the very file this assembly wrote, its checksum checked."""
        return self.checksums and self._wrote(path)

    def _wrote(self, path: Path) -> bool:
        entry = self.assembled.get(Path(path))
        return entry is not None and entry[0] == _identity(path)

    def complete(self, sources: Iterable[tuple[Path, np.ndarray]]) -> int:
        """Write every row from the checkpoint that holds it, ``(path, indices)`` each
        (the merge's sources, already checked); return how many rows had to be written
        now. Rows some other file wrote are written again from theirs. The lock goes:
        the merge opens the file with HDF5, which takes its own."""
        self.stop()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        late = 0
        for path, indices in sources:
            entry = self.assembled.get(Path(path))
            number = entry[1] if entry is not None and self._wrote(path) else -1
            if number < 0 or not np.all(self.owner[indices] == number):
                self.add(Path(path), check=False)
                late += len(indices)
        return late

    def add(self, path: Path, check: bool = True) -> None:
        """Write the pooled rows of the finished checkpoint ``path`` into place; with
        ``check`` it is validated first (header, shapes, checksum), and skipped if bad:
        the merge then names it, as without an assembly."""
        identity = _identity(path)
        if check:
            try:
                validate_checkpoint_hdf5(path, self.manifest, verify_checksum=self.checksums)
            except InvalidCheckpointError:
                self.rejected[Path(path)] = identity
                return
        number = len(self.assembled)
        with h5py.File(path, "r") as f, open(path, "rb", buffering=0) as raw:
            indices = f["indices"][()]
            # Claimed by nobody until every dataset is written: a failure halfway leaves
            # rows that the merge writes again from the file it takes them from.
            self.owner[indices] = -1
            for name in self.names:
                self._place(indices, _values(f[name], raw), self.offsets[name])
        # On the disk now, while the GPU works, not in the merge's final sync.
        os.fdatasync(self._fd)
        self.owner[indices] = number
        self.assembled[Path(path)] = (identity, number)

    def _place(self, indices: np.ndarray, values: np.ndarray, offset: int) -> None:
        """The rows at their places in the dataset starting at ``offset`` in the file:
        scattered through a mapping of their span, or one write per run of consecutive
        input indices."""
        if not len(indices):
            return
        rows = byte_view(values).reshape(len(indices), self.row_bytes)
        if not self.mapped:
            _write_runs(self._fd, offset, indices, rows)
            return
        low, high = int(indices.min()), int(indices.max()) + 1
        begin = offset + low * self.row_bytes
        start = begin - begin % mmap.ALLOCATIONGRANULARITY
        length = begin - start + (high - low) * self.row_bytes
        with mmap.mmap(self._fd, length, offset=start) as mapped:
            _scatter(mapped, begin - start, high - low, indices - low, rows)

    def _poll(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                for path in self._finished():
                    if self._stop.is_set():
                        return
                    try:
                        seen = path in self.assembled or self.rejected.get(path) == _identity(path)
                        if not seen:
                            self.add(path)
                    except FileNotFoundError:  # set aside meanwhile: the merge decides
                        continue
        except Exception as exc:  # the merge falls back to writing everything itself
            self.error = exc
            log.debug("assembly stopped: %s", exc)

    def _finished(self) -> list[Path]:
        paths = []
        for _rank, directory in iter_rank_dirs(self.run_dir):
            paths += sorted(p for p in directory.iterdir() if CHECKPOINT_NAME.match(p.name))
        return paths


def _scatter(mapped: mmap.mmap, at: int, count: int, places: np.ndarray, rows: np.ndarray) -> None:
    """``rows`` into rows ``places`` of the ``count`` rows mapped from byte ``at``; the
    view of the mapping ends with this call, so the mapping can close."""
    target = np.frombuffer(mapped, np.uint8, count * rows.shape[1], at)
    try:
        target.reshape(count, rows.shape[1])[places] = rows
    finally:
        del target  # an error's traceback must not keep the mapping open


def _write_runs(fd: int, offset: int, indices: np.ndarray, rows: np.ndarray) -> None:
    """``rows`` to rows ``indices`` of the dataset at ``offset``, a write per run of
    consecutive indices."""
    row_bytes = rows.shape[1]
    data = rows.reshape(-1).data
    cuts = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    stops = np.concatenate((cuts, [len(indices)])).tolist()
    for first, stop in zip(starts, stops, strict=True):
        piece = data[first * row_bytes : stop * row_bytes]
        at = offset + int(indices[first]) * row_bytes
        while piece:
            written = os.pwrite(fd, piece, at)
            piece, at = piece[written:], at + written


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path``, from the mount table (Linux), or
    None where it is not known."""
    device = os.stat(path).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        mount, _, source = line.partition(" - ")
        fields = mount.split()
        if len(fields) > 2 and fields[2] == wanted and source:
            return source.split()[0]
    return None


class UnreservableError(OSError):
    """The output's blocks could not be reserved (``errno`` ENOSPC: the disk is full)."""


def _reserve(fd: int, offset: int, size: int) -> None:
    """Allocate the file's blocks for ``size`` bytes from ``offset`` now (fallocate(2),
    size unchanged): ``os.posix_fallocate`` would, on a filesystem without it, write
    every block instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    # fallocate64 takes 64-bit offsets on 32-bit systems too.
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is None:
        raise UnreservableError(errno.EOPNOTSUPP, "no fallocate on this system")
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if os.fstat(fd).st_size < offset + size:  # a mapping past the end faults
        raise UnreservableError(errno.EINVAL, "the output's datasets end past its file")
    if fallocate(fd, _KEEP_SIZE, offset, size) != 0:
        code = ctypes.get_errno()
        raise UnreservableError(code, f"cannot reserve the output's blocks: {os.strerror(code)}")


def _identity(path: Path) -> Identity:
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _values(ds: h5py.Dataset, raw: Any) -> np.ndarray:
    """A checkpoint's dataset, read without h5py's lock where it is stored plain."""
    extent = raw_extent(ds)
    if extent is None:
        return ds[()]
    flat = np.empty(extent[1], dtype=np.uint8)
    at = 0
    for piece in read_range(raw, *extent):
        flat[at : at + len(piece)] = piece
        at += len(piece)
    return flat.view(ds.dtype).reshape(ds.shape)


def _create(
    path: Path, names: list[str], shape: tuple[int, int], dtype: np.dtype
) -> dict[str, int]:
    """The file with each dataset's space allocated now (so its place in the file is
    known) and never filled (nothing is written twice); the place of each."""
    handle = create_unbuffered(path)
    try:
        offsets = {}
        for name in names:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            ds = handle.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl, fill_time="never")
            offsets[name] = int(ds.id.get_offset())
        handle.close()
    except BaseException:
        abandon(handle, path)
        raise
    return offsets
