"""Built-in plugin: the HDF5 writer that merges a finished run into ``embeddings.h5``."""

from __future__ import annotations

from pathlib import Path

from virnucpro.cli.hookspecs import hookimpl
from virnucpro.cli.jobs import PIPELINE
from virnucpro.cli.writers import WriterRegistry


class Hdf5Writer:
    name = "hdf5"

    def write(self, run_dir: Path) -> Path:
        return PIPELINE.write_hdf5(run_dir)


@hookimpl
def virnucpro_register_writers(registry: WriterRegistry) -> None:
    registry.register(Hdf5Writer())
