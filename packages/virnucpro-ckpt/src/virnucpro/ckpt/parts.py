"""A per-token output's parts: the checkpoints, put beside the merged file, whose rows its
per-token datasets map.

Per-token values are most of a run's bytes (about 52 GB for 20M tokens of 650M in
float16). Copying them into input order doubled the disk a run needs and took longer
than computing them. The merged file instead maps the parts' own rows, part after part
(an HDF5 virtual dataset, its source paths relative to the merged file), and says where
each input row lies (``layer_{L}/per_token_spans``). A part is a hard link to its
checkpoint, so removing the checkpoints afterwards loses nothing; where the filesystem
refuses links, or the run compresses its output, a part is a copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from virnucpro.ckpt.batch import is_per_token
from virnucpro.ckpt.checkpoint_file import (
    dataset_names,
    file_checksum,
    in_hash_threads,
    read_attrs,
)
from virnucpro.ckpt.errors import DiskFullError, one_line
from virnucpro.ckpt.fsio import fsync_dir
from virnucpro.ckpt.layout import (
    PARTS_DIR,
    TEMP_SUFFIX,
    checkpoint_path,
    new_session_id,
    part_name,
    temp_path,
)
from virnucpro.ckpt.safe_write import (
    HDF5_OVERHEAD_BYTES,
    disk_full_error,
    is_disk_full,
    write_hdf5_atomically,
)
from virnucpro.ckpt.storage import storage

PARTS_ATTR = "per_token_parts"
"""The merged file's record of its parts: JSON ``{part path: data checksum}``."""
COPY_BYTES = 64 * 2**20


def publish_parts(run_dir: Path, checkpoints: Sequence[Path], compression: str) -> dict[str, str]:
    """Put one part per checkpoint under ``RUN_DIR/embeddings_per_token`` (replacing any
    earlier parts) and return ``{part path: data checksum}``, in part order.

    The parts are built in a temporary folder and renamed into place whole, so a kill
    leaves no parts folder or a whole one (an interrupted folder is removed as a stale
    temporary). Call it only once the checkpoints hold every row, with no merged file
    in place that maps earlier parts.
    """
    run_dir = Path(run_dir)
    merge = new_session_id()
    staging = run_dir / f".{PARTS_DIR}.{merge}{TEMP_SUFFIX}"
    final = run_dir / PARTS_DIR
    # Earlier parts are of no use to anyone now (every row is in the checkpoints, and no
    # merged file maps them), and a disk they fill would refuse the new ones.
    if final.exists():
        shutil.rmtree(final)
    staging.mkdir()
    recorded = {}
    try:
        for number, checkpoint in enumerate(checkpoints):
            name = part_name(merge, number)
            target = staging / Path(name).name
            if compression == "none":
                _link_or_copy(checkpoint, target)
            else:
                _compressed_copy(checkpoint, target, compression)
            with h5py.File(target, "r") as f:
                recorded[name] = str(read_attrs(f)["data_checksum"])
        fsync_dir(staging)
        os.rename(staging, final)
        fsync_dir(run_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, DiskFullError) or is_disk_full(exc):
            # Said of the folder users see, not of the temporary one just removed.
            raise disk_full_error(final, getattr(exc, "needed_bytes", None)) from None
        raise
    return recorded


def restorable_checkpoints(run_dir: Path) -> list[tuple[Path, Path]]:
    """(part, checkpoint) for every part whose checkpoint is gone: what
    :func:`restore_checkpoints` would link back, and what a report of the run counts as
    done beside the checkpoints on disk."""
    folder = Path(run_dir) / PARTS_DIR
    found: list[tuple[Path, Path]] = []
    for part in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        try:
            with h5py.File(part, "r") as f:
                attrs = read_attrs(f)
            target = checkpoint_path(run_dir, attrs["rank"], attrs["session"], attrs["sequence"])
        except (OSError, KeyError, ValueError, TypeError):
            continue  # not a part that can be trusted to say where it belongs
        if not target.exists():
            found.append((part, target))
    return found


def restore_checkpoints(run_dir: Path) -> list[Path]:
    """Link every part whose checkpoint is gone back into ``RUN_DIR/checkpoints`` (a part
    is a whole checkpoint under another name); return the checkpoints restored.

    An output found damaged after its checkpoints were removed then costs a merge, not
    a recomputation: resume validates the restored files like any checkpoint and
    computes again only the rows of those that fail."""
    restored: list[Path] = []
    for part, target in restorable_checkpoints(run_dir):
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(part, target)
        restored.append(target)
    for directory in {path.parent for path in restored}:
        fsync_dir(directory)
    return restored


def check_parts(merged: Path, f: h5py.File, recorded: Mapping[str, str], full: bool) -> str | None:
    """None when every part the merged file ``f`` maps is there (and, ``full``, holds the
    data its checksum says), else one line naming the first that is not."""
    # HDF5 looks for the parts beside the file a link points to, and so does this.
    base = Path(merged).resolve().parent
    mapped = mapped_parts(f)
    if not set(mapped) <= set(recorded):
        strays = sorted(set(mapped) - set(recorded))
        return f"{merged}: maps {strays[0]}, which it does not record as a part"
    missing = [name for name in recorded if not (base / name).is_file()]
    if missing:
        return (
            f"{merged}: part {missing[0]} is missing ({len(missing)} of {len(recorded)});"
            f" a per-token output is {Path(merged).name} with the folder {PARTS_DIR} beside it"
        )
    if not full:
        return None
    problems = in_hash_threads(lambda item: _part_problem(base, *item), list(recorded.items()))
    found = next((p for p in problems if p is not None), None)
    return None if found is None else f"{merged}: {found}"


def mapped_parts(f: h5py.File) -> list[str]:
    """The part files the per-token datasets of ``f`` read from, in order, once each."""
    names: list[str] = []
    f.visititems(
        lambda name, obj: (
            names.extend(s.file_name for s in obj.virtual_sources())
            if isinstance(obj, h5py.Dataset) and is_per_token(name) and obj.is_virtual
            else None
        )
    )
    return list(dict.fromkeys(names))


def _part_problem(base: Path, name: str, expected: str) -> str | None:
    try:
        with h5py.File(base / name, "r") as f:
            actual = file_checksum(f)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return f"part {name} is unreadable ({one_line(exc)})"
    return None if actual == expected else f"part {name} is damaged (its data checksum differs)"


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _compressed_copy(source: Path, target: Path, compression: str) -> None:
    """The checkpoint with its per-token datasets compressed; its data, and so its data
    checksum, unchanged."""
    with h5py.File(source, "r") as src:

        def fill(out: h5py.File) -> None:
            for name in dataset_names(src):
                ds = src[name]
                if not is_per_token(name):
                    src.copy(ds, out, name=name)
                    continue
                layout = storage(ds.shape, ds.dtype, compression, per_token=True)
                copy = out.create_dataset(name, shape=ds.shape, dtype=ds.dtype, **layout)
                step = max(1, COPY_BYTES // max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize))
                for start in range(0, ds.shape[0], step):
                    copy[start : start + step] = ds[start : start + step]
            for key, value in src.attrs.items():
                out.attrs[key] = value

        needed = os.path.getsize(source) + HDF5_OVERHEAD_BYTES
        write_hdf5_atomically(target, temp_path(target), fill, needed)
