"""The seam between the command line and the pipeline (data, infer, ckpt).

Commands validate what the person typed and call these functions; nothing else in the
cli knows the pipeline. Each function raises :mod:`virnucpro.cli.errors` types for
failures a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from virnucpro.cli.options import ResumeOptions, RunOptions
from virnucpro.cli.plugins import PluginHost
from virnucpro.cli.progress import ProgressDisplay, create_progress
from virnucpro.cli.report import RunReport
from virnucpro.cli.signals import GracefulStop
from virnucpro.cli.summary import RunSummary


class ProgressFactory:
    """Makes the display once the pipeline knows the total and what is already done."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, total: int, completed: int = 0) -> ProgressDisplay:
        return create_progress(self.console, total, completed)


@dataclass(frozen=True)
class JobContext:
    """What a job gets from the command line besides its options."""

    plugins: PluginHost
    """Fill infer's model registry with ``plugins.register_models(registry)``; writers
    come from ``plugins.writers()``."""
    progress: ProgressFactory
    stop: GracefulStop
    """Check ``stop.requested`` at batch boundaries; once stopped and checkpointed,
    ``raise stop.stopped_error(run_dir)``."""
    console: Console


class Jobs:
    """The pipeline behind ``run``, ``resume`` and ``inspect-checkpoint``."""

    def run(self, options: RunOptions, context: JobContext) -> RunSummary:
        """Embed ``options.inputs`` into ``options.run_dir``; write the outputs."""
        raise NotImplementedError("virnucpro run is not wired to the pipeline yet")

    def resume(self, options: ResumeOptions, context: JobContext) -> RunSummary:
        """Continue the run in ``options.run_dir`` (``already_complete`` if nothing was left)."""
        raise NotImplementedError("virnucpro resume is not wired to the pipeline yet")

    def inspect(self, run_dir: Path, verify: bool) -> RunReport:
        """The state of ``run_dir``; ``verify`` checks every checksum."""
        raise NotImplementedError("virnucpro inspect-checkpoint is not wired to the pipeline yet")

    def write_hdf5(self, run_dir: Path) -> Path:
        """Merge the checkpoints of the finished run into ``run_dir/embeddings.h5``."""
        raise NotImplementedError("the HDF5 writer is not wired to virnucpro.ckpt yet")

    def esm2_backend(self) -> object:
        """The ESM-2 (fair-esm) backend for infer's ``ModelRegistry.register``."""
        raise NotImplementedError("the ESM-2 backend is not wired to virnucpro.infer yet")


PIPELINE = Jobs()
