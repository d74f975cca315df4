"""Write an HDF5 file under a temporary name and publish it; a full disk raises DiskFullError.

Why a full disk used to end in a segfault (lesson 15): HDF5 defers small data writes
(its sieve buffer) and metadata (its cache) to when a dataset or the file is closed.
When the disk is full those deferred writes fail inside h5py's object deallocation,
where the error is ignored ("Can't decrement id ref count ... errno 28"), leaving
object ids half closed, and the interpreter crashes when it frees them later. So the
file is created without the sieve buffer (a data write fails where it is made), and
on any failure the temporary file is first truncated to nothing (giving the space
back), then closed (the metadata flush now fits), then unlinked. Nothing outside the
temporary file is touched, so every finished checkpoint stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py

from virnucpro.ckpt.errors import DiskFullError
from virnucpro.ckpt.fsio import publish

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("errno = 28", "No space left on device", "Disk quota exceeded")
# HDF5 metadata, B-trees and alignment on top of the data itself.
HDF5_OVERHEAD_BYTES = 64 * 2**10


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT, also when HDF5 only says it in its message text."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and any(t in str(exc) for t in _NO_SPACE_TEXT)


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def disk_full_error(path: Path, needed_bytes: int | None = None) -> DiskFullError:
    """The one-line error: disk full, where, how much is needed (when known), what to do."""
    try:
        free = free_bytes(Path(path).parent)
    except OSError:
        free = None
    amounts = []
    if needed_bytes is not None:
        amounts.append(f"needs about {human_size(needed_bytes)}")
    if free is not None:
        amounts.append(f"{human_size(free)} free")
    said = f" ({', '.join(amounts)})" if amounts else ""
    return DiskFullError(
        f"disk full: cannot write {path}{said}; free space there and run resume "
        "(finished checkpoints are kept)",
        path,
        needed_bytes,
    )


def check_space(path: Path, needed_bytes: int) -> None:
    """Raise DiskFullError before writing when ``path``'s filesystem cannot hold it."""
    if free_bytes(Path(path).parent) < needed_bytes:
        raise disk_full_error(path, needed_bytes)


def write_hdf5_atomically(
    final: Path,
    tmp: Path,
    fill: Callable[[h5py.File], None],
    needed_bytes: int | None = None,
    existing: bool = False,
) -> int:
    """Create ``tmp`` (``existing``: open it, already begun), let ``fill`` write it,
    publish it as ``final``; return its size.

    ``needed_bytes`` (if given) is checked against the free space first. On any error
    the temporary file is removed; running out of space raises DiskFullError.
    """
    if needed_bytes is not None:
        check_space(final, needed_bytes)
    handle: h5py.File | None = None
    try:
        handle = open_unbuffered(tmp) if existing else create_unbuffered(tmp)
        fill(handle)
        handle.flush()
        handle.close()
        handle = None
        size = os.path.getsize(tmp)
        publish(tmp, final)
        return size
    except BaseException as exc:
        abandon(handle, tmp)
        if is_disk_full(exc):
            raise disk_full_error(final, needed_bytes) from None
        raise


def create_unbuffered(path: Path) -> h5py.File:
    """A new HDF5 file without the raw-data sieve buffer: small writes reach the disk at
    once, so ENOSPC is raised by the write that hit it, not later while h5py frees a
    dataset (where the error is ignored and HDF5 is left broken)."""
    fid = h5py.h5f.create(str(path).encode(), h5py.h5f.ACC_TRUNC, fapl=_unbuffered())
    return h5py.File(fid)


def open_unbuffered(path: Path) -> h5py.File:
    """An existing HDF5 file, open for writing without the sieve buffer (as above)."""
    fid = h5py.h5f.open(str(path).encode(), h5py.h5f.ACC_RDWR, fapl=_unbuffered())
    return h5py.File(fid)


def _unbuffered() -> h5py.h5p.PropFAID:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # as h5py.File
    fapl.set_sieve_buf_size(0)
    return fapl


def abandon(handle: h5py.File | None, tmp: Path) -> None:
    """Give the space back, close the file cleanly, remove it (see the module's note)."""
    if handle is not None:
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
        with contextlib.suppress(Exception):
            handle.close()
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def human_size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"
