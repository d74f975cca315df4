"""``run`` and ``resume``: one path for every placement.

1. Choose the executor once (torchrun ranks, a node's devices, or this process).
2. The lead (the only process, or rank 0) takes the run lock and sets the session up;
   every other rank receives what it found.
3. Plan what valid checkpoints do not hold; each process embeds its part.
4. Add up what every process did; a stop anywhere raises :class:`RunStopped` after
   every finished batch is checkpointed.
5. The lead sets aside temporary files of dead workers and writes the output through
   the run's writer (which may have begun it while the run computed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.ckpt import RunLock, resume_from_checkpoints
from virnucpro.data import plan_batches
from virnucpro.infer.job.config import Placement, RunConfig
from virnucpro.infer.job.devices import Target
from virnucpro.infer.job.errors import OutputError, RunStopped
from virnucpro.infer.job.executors import NodeExecutor, Ports, select_executor
from virnucpro.infer.job.quality import quality_lines
from virnucpro.infer.job.ranks import torchrun_world
from virnucpro.infer.job.reporting import (
    LoggingReporter,
    NoProgress,
    Progress,
    Reporter,
    StopFlag,
    never,
)
from virnucpro.infer.job.rundir import removed_if_nothing_computed
from virnucpro.infer.job.setup import (
    Session,
    Shared,
    join_session,
    set_up_resume,
    set_up_run,
)
from virnucpro.infer.job.translate import job_errors
from virnucpro.infer.plugins import PluginHost, load_plugins
from virnucpro.infer.writers import AssemblingWriter, OutputWriter, row_data

DEFAULT_PLACEMENT = Placement()
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class JobResult:
    """What a finished session reports; speed counts this session only."""

    output: Path
    sequences: int
    """Sequences in the output."""
    new_sequences: int
    """Sequences embedded by this session (fewer than ``sequences`` after a resume)."""
    tokens: int
    seconds: float
    already_complete: bool = False
    """Nothing was left to embed."""
    lead: bool = True
    """False on torchrun ranks other than 0, which neither merge nor report."""
    notes: tuple[str, ...] = ()
    """What the run says about its input (sequences truncated, characters replaced)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def run_job(
    config: RunConfig,
    run_dir: Path,
    placement: Placement = DEFAULT_PLACEMENT,
    *,
    force: bool = False,
    plugins: PluginHost | None = None,
    reporter: Reporter | None = None,
    should_stop: StopFlag = never,
) -> JobResult:
    """Embed ``config.inputs`` into ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    plugins = plugins or load_plugins(os.environ)
    reporter = reporter or LoggingReporter()
    return _session(
        run_dir,
        placement,
        lambda target: set_up_run(config, run_dir, target, plugins, reporter, force),
        plugins,
        reporter,
        should_stop,
    )


def resume_job(
    run_dir: Path,
    placement: Placement = DEFAULT_PLACEMENT,
    *,
    plugins: PluginHost | None = None,
    reporter: Reporter | None = None,
    should_stop: StopFlag = never,
) -> JobResult:
    """Continue the run in ``run_dir`` (``already_complete`` if nothing was left)."""
    run_dir = Path(run_dir).resolve()
    plugins = plugins or load_plugins(os.environ)
    reporter = reporter or LoggingReporter()
    return _session(
        run_dir,
        placement,
        lambda target: set_up_resume(run_dir, target, plugins, reporter),
        plugins,
        reporter,
        should_stop,
    )


def _session(
    run_dir: Path,
    placement: Placement,
    set_up: Callable[[Target], Session],
    plugins: PluginHost,
    reporter: Reporter,
    should_stop: StopFlag,
) -> JobResult:
    started = time.perf_counter()
    with job_errors():
        executor = select_executor(placement, torchrun_world())
    with job_errors(), executor.coordinator() as ranks, contextlib.ExitStack() as held:
        lead = ranks.world.lead
        own: list[Session] = []

        def lead_set_up() -> Shared:
            with job_errors():
                held.enter_context(removed_if_nothing_computed(run_dir))
                held.enter_context(RunLock(run_dir))
                own.append(set_up(executor.targets[0]))
            return own[0].shared

        shared = ranks.share(lead_set_up if lead else None)
        writer = plugins.writers().get(shared.manifest.output_format)
        if shared.complete:
            return _finish(run_dir, shared, writer, started, 0, 0, own[0] if own else None)
        if should_stop():
            raise RunStopped(run_dir)
        session = own[0] if own else join_session(run_dir, shared)
        if lead and isinstance(writer, AssemblingWriter):
            held.enter_context(writer.assembling(run_dir))
        batches = executor.share_of(_plan(session), session)
        total = session.manifest.num_sequences
        display = reporter.progress(total, len(shared.done)) if lead else contextlib.nullcontext()
        with ranks.watch(placement.stall_timeout, reporter.say) as watch:
            with display as progress:
                ticking = _Ticking(progress or NoProgress(), watch.progressed)
                ports = Ports(ticking, reporter.say, should_stop, plugins, placement.stall_timeout)
                outcome = executor.embed(session, batches, ports)
            watch.done()
            # The slowest rank is still watched while the others wait here.
            stopped, sequences, tokens = ranks.sum(
                int(outcome.stopped), outcome.sequences, outcome.tokens
            )
        if stopped:
            raise RunStopped(run_dir)
        if lead and isinstance(executor, NodeExecutor):
            # Killed workers may have left temporary files; the writer takes finished ones
            # and checks their checksums itself (reading them all twice cost seconds).
            resume_from_checkpoints(
                run_dir, session.manifest.to_dict(), quarantine=True, verify_checksum=False
            )
        return _finish(run_dir, shared, writer, started, sequences, tokens, own[0] if own else None)


class _Ticking:
    """Progress that also tells the rank watch a batch finished."""

    def __init__(self, progress: Progress, tick: Callable[[], None]) -> None:
        self.progress = progress
        self.tick = tick

    def add_worker(self, label: str, total: int | None, completed: int) -> None:
        self.progress.add_worker(label, total, completed)

    def advance(self, label: str, sequences: int, tokens: int) -> None:
        self.tick()
        self.progress.advance(label, sequences, tokens)


def _plan(session: Session) -> list[np.ndarray]:
    """What is left, packed; deterministic, so every rank computes the same plan."""
    lengths, max_length = session.batch_costs()
    return plan_batches(
        lengths, session.manifest.token_budget, max_length, exclude=session.shared.done
    )


def _finish(
    run_dir: Path,
    shared: Shared,
    writer: OutputWriter,
    started: float,
    sequences: int,
    tokens: int,
    lead: Session | None,
) -> JobResult:
    """The lead (the process holding ``lead``, its session) writes the output, with the
    index's per-row facts, unless an intact one is there already, checks what it
    wrote, and then (unless the run keeps them) removes the checkpoints: the data is
    on disk once. An output that does not check keeps every checkpoint and says so."""
    complete_before = sequences == 0 and shared.complete
    if lead is None or shared.output_intact:
        output = writer.output_path(run_dir)
    else:
        output = writer.write(run_dir, row_data(lead.index))
        problem = writer.check(run_dir)
        if problem is not None:
            raise OutputError(
                f"the output just written does not check ({problem}); every checkpoint is "
                f"kept: run `virnucpro resume {run_dir}` to write it again"
            )
        if not shared.manifest.keep_checkpoints:
            shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)
    return JobResult(
        output=output,
        sequences=shared.manifest.num_sequences,
        new_sequences=sequences,
        tokens=tokens,
        seconds=time.perf_counter() - started,
        already_complete=complete_before,
        lead=lead is not None,
        notes=tuple(quality_lines(shared.manifest.quality)),
    )
