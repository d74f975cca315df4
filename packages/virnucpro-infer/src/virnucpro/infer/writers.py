"""Output writers: each turns a finished run's checkpoints into one output file.

The engine picks one by the run's ``output_format``; the built-in writer is HDF5
(``embeddings.h5``, read back with ``virnucpro.ckpt.open_embeddings``); plugins add
others through the ``virnucpro_register_writers`` hook. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from virnucpro.data import SequenceIndex


@runtime_checkable
class OutputWriter(Protocol):
    """Writes, and later recognises, the result of a finished run."""

    name: str
    """Short name users pick the writer by (``--format``), e.g. ``hdf5``."""

    def output_path(self, run_dir: Path) -> Path:
        """Where :meth:`write` puts the result of the run in ``run_dir``."""
        ...

    def write(self, run_dir: Path, rows: Mapping[str, np.ndarray]) -> Path:
        """Write the output of the finished run in ``run_dir``; return its path.

        ``rows``: per-row facts of the input, one array of N values each, in input order
        (:func:`row_data`), for the writer to store beside the embeddings."""
        ...

    def check(self, run_dir: Path) -> str | None:
        """None if the written output is complete and intact, else one line saying what
        is wrong with it (the engine then writes it again from the checkpoints)."""
        ...


@runtime_checkable
class AssemblingWriter(Protocol):
    """A writer that begins its output while the run computes (optional)."""

    def assembling(self, run_dir: Path) -> AbstractContextManager[object]:
        """For the computing part of a session in ``run_dir``: what :meth:`write` finishes
        afterwards was begun meanwhile; leaving without a write drops what was begun."""
        ...


def row_data(index: SequenceIndex) -> dict[str, np.ndarray]:
    """What every output holds per row besides its embeddings: ``input_length``
    (residues before any truncation), ``nonstandard`` (characters that were not standard
    amino-acid letters) and, in DNA reads mode, where the row came from: ``read_id``
    (the read's id), ``chunk`` (from 1) and ``frame`` (0-5: F1, F2, F3, R1, R2, R3)."""
    rows = {
        "input_length": np.asarray(index.lengths, dtype=np.int64),
        "nonstandard": np.asarray(index.nonstandard, dtype=np.int64),
    }
    if index.input_type == "dna":
        read_ids = np.array(index.read_ids, dtype=object)
        rows["read_id"] = read_ids[np.asarray(index.read_index)]
        rows["chunk"] = np.asarray(index.chunk, dtype=np.int32)
        rows["frame"] = np.asarray(index.frame, dtype=np.int8)
    return rows


class WriterRegistry:
    """Output writers by name; a name may be registered once."""

    def __init__(self) -> None:
        self._writers: dict[str, OutputWriter] = {}

    def register(self, writer: OutputWriter) -> None:
        if not isinstance(writer, OutputWriter):
            raise TypeError(
                f"{writer!r} is not an output writer (needs .name, .output_path(), .write() "
                "and .check())"
            )
        if writer.name in self._writers:
            raise ValueError(f"an output writer named {writer.name!r} is already registered")
        self._writers[writer.name] = writer

    def get(self, name: str) -> OutputWriter:
        try:
            return self._writers[name]
        except KeyError:
            known = ", ".join(sorted(self._writers)) or "none"
            raise KeyError(f"no output writer named {name!r} (registered: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._writers)
