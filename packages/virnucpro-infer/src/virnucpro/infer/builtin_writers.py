"""Built-in plugin: the HDF5 writer, whose ``embeddings.h5`` the ckpt reader opens."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from virnucpro.ckpt import (
    DiskFullError,
    OutputAssembly,
    merge_checkpoints,
    read_manifest,
    verify_output,
)
from virnucpro.ckpt.layout import PER_TOKEN
from virnucpro.infer.hookspecs import hookimpl
from virnucpro.infer.writers import WriterRegistry

MERGED_NAME = "embeddings.h5"


class Hdf5Writer:
    name = "hdf5"

    def __init__(self) -> None:
        self._assemblies: dict[Path, OutputAssembly] = {}

    def output_path(self, run_dir: Path) -> Path:
        return Path(run_dir) / MERGED_NAME

    @contextmanager
    def assembling(self, run_dir: Path) -> Iterator[None]:
        """The pooled rows go into ``embeddings.h5``'s temporary file as checkpoints land
        (:mod:`virnucpro.ckpt.assembly`): the merge after the last batch then writes only
        what is left. A run whose output cannot be assembled (compressed, per-token only),
        or a disk without room for it now, is merged as before."""
        run_dir = Path(run_dir)
        try:
            assembly = OutputAssembly.for_run(run_dir)
        except DiskFullError:
            assembly = None
        if assembly is None:
            yield
            return
        self._assemblies[run_dir] = assembly
        assembly.start()
        try:
            yield
        finally:
            del self._assemblies[run_dir]
            assembly.discard()

    def write(self, run_dir: Path, rows: Mapping[str, np.ndarray]) -> Path:
        """A per-token run's checkpoints become the output's parts, which :meth:`check`
        hashes (the engine checks every output it writes, keeping every checkpoint when
        one does not check), so the merge does not hash them first: the largest outputs
        are read once, not twice (twice cost 52 GB of reads on 20M tokens of 650M)."""
        linked = PER_TOKEN in read_manifest(run_dir)["pooling"]
        return merge_checkpoints(
            run_dir,
            verify_checksum=not linked,
            rows=rows,
            assembly=self._assemblies.get(Path(run_dir)),
        )

    def check(self, run_dir: Path) -> str | None:
        """Every dataset read back against the sha256 the merge recorded while writing."""
        return verify_output(run_dir)


@hookimpl
def virnucpro_register_writers(registry: WriterRegistry) -> None:
    registry.register(Hdf5Writer())
