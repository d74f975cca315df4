"""Where a session's batches are embedded: one device, every device of a node, or one
torchrun rank. Each executor answers the same calls, so ``run`` and ``resume`` never
branch on placement; :func:`select_executor` chooses once (torchrun detected first).

- :class:`LocalExecutor`: this process, one device, DataLoader workers pack batches.
- :class:`NodeExecutor`: one spawned worker per device through the queue manager; the
  plan is cut into units handed out on demand, a dead worker is respawned and its
  unit re-queued. SIGINT/SIGTERM in the parent reach the workers as a shared Event.
- :class:`RankExecutor`: this torchrun rank's share of the plan on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from virnucpro.data import split_for_rank
from virnucpro.infer.job.compute import embed_batches, load_forward
from virnucpro.infer.job.config import Placement
from virnucpro.infer.job.devices import Target, rank_target, resolve_targets
from virnucpro.infer.job.node_worker import UnitResult, embedding_worker
from virnucpro.infer.job.ranks import Coordinator, Solo, World
from virnucpro.infer.job.reporting import Progress, StopFlag
from virnucpro.infer.job.setup import Session
from virnucpro.infer.job.watch import STARTUP_TIMEOUT_S
from virnucpro.infer.pipeline import STOPPED
from virnucpro.infer.plugins import PluginHost
from virnucpro.infer.queue_manager import BatchQueueManager, QueueEvent
from virnucpro.infer.work_units import cut_into_units

STOP_POLL_S = 0.1


@dataclass(frozen=True)
class Ports:
    """What an executor reports through and asks."""

    progress: Progress
    say: Callable[[str], None]
    should_stop: StopFlag
    plugins: PluginHost
    stall_timeout: float
    """Seconds without progress before a worker counts as stalled."""


@dataclass(frozen=True)
class Outcome:
    """This process's (or node's) work in the session."""

    stopped: bool
    sequences: int
    tokens: int


class Executor(Protocol):
    targets: list[Target]
    """Where the work runs; the first decides ``auto`` precision and token budget."""

    def coordinator(self) -> Solo | Coordinator: ...

    def share_of(self, batches: list[np.ndarray], session: Session) -> list[np.ndarray]:
        """This process's part of the session's plan."""
        ...

    def embed(
        self,
        session: Session,
        batches: Sequence[np.ndarray],
        ports: Ports,
    ) -> Outcome: ...


def select_executor(placement: Placement, world: World | None) -> Executor:
    if world is not None:
        return RankExecutor(world, rank_target(placement, world), placement.workers)
    targets = resolve_targets(placement)
    if len(targets) == 1:
        return LocalExecutor(targets, placement.workers)
    return NodeExecutor(targets)


class _NoRanks:
    """Placements without torchrun: nobody to coordinate with, the whole plan here."""

    def coordinator(self) -> Solo:
        return Solo()

    def share_of(self, batches: list[np.ndarray], session: Session) -> list[np.ndarray]:
        return batches


class LocalExecutor(_NoRanks):
    def __init__(self, targets: list[Target], workers: int) -> None:
        self.targets = targets
        self.workers = workers

    def embed(
        self,
        session: Session,
        batches: Sequence[np.ndarray],
        ports: Ports,
    ) -> Outcome:
        target = self.targets[0]
        ports.progress.add_worker(
            target.label, session.manifest.num_sequences, len(session.shared.done)
        )
        return _embed_here(session, batches, target, ports, 0, 1, self.workers)


class RankExecutor:
    def __init__(self, world: World, target: Target, workers: int) -> None:
        self.world = world
        self.targets = [target]
        self.workers = workers

    def coordinator(self) -> Coordinator:
        return Coordinator(self.world)

    def share_of(self, batches: list[np.ndarray], session: Session) -> list[np.ndarray]:
        lengths, max_length = session.batch_costs()
        return split_for_rank(batches, self.world.rank, self.world.size, lengths, max_length)

    def embed(
        self,
        session: Session,
        batches: Sequence[np.ndarray],
        ports: Ports,
    ) -> Outcome:
        target = self.targets[0]
        ports.progress.add_worker(target.label, None, 0)
        return _embed_here(
            session, batches, target, ports, self.world.rank, self.world.size, self.workers
        )


def _embed_here(
    session: Session,
    batches: Sequence[np.ndarray],
    target: Target,
    ports: Ports,
    rank: int,
    world_size: int,
    workers: int,
) -> Outcome:
    if not batches:
        return Outcome(ports.should_stop(), 0, 0)
    forward = load_forward(session, target.device, ports.plugins)
    outcome = embed_batches(
        session,
        batches,
        forward,
        target.device,
        rank=rank,
        world_size=world_size,
        workers=workers,
        on_batch=lambda sequences, tokens: ports.progress.advance(target.label, sequences, tokens),
        should_stop=ports.should_stop,
    )
    return Outcome(outcome.status == STOPPED, outcome.sequences, outcome.tokens)


class NodeExecutor(_NoRanks):
    def __init__(self, targets: list[Target], warmup: bool = False) -> None:
        self.targets = targets
        self.warmup = warmup

    def embed(
        self,
        session: Session,
        batches: Sequence[np.ndarray],
        ports: Ports,
    ) -> Outcome:
        for slot, target in enumerate(self.targets):
            ports.progress.add_worker(target.label, None, session.shared.done_by_rank.get(slot, 0))
        context = multiprocessing.get_context("spawn")
        stop_event = context.Event()
        manager = BatchQueueManager(
            embedding_worker,
            [str(target.device) for target in self.targets],
            worker_kwargs={
                "session": session,
                "stop": stop_event,
                "world_size": len(self.targets),
                "warmup": self.warmup,
            },
            stall_timeout_s=ports.stall_timeout,
            startup_timeout_s=max(ports.stall_timeout, STARTUP_TIMEOUT_S),
            visible_devices=_alone(self.targets),
        )
        units = cut_into_units(batches, session.index.ids, len(self.targets))
        finished = threading.Event()
        bridge = threading.Thread(
            target=_forward_stop, args=(ports.should_stop, stop_event, finished), daemon=True
        )
        bridge.start()
        try:
            results: dict[int, UnitResult] = manager.run(
                units, _EventProgress(ports.progress, [t.label for t in self.targets], ports.say)
            )
        finally:
            finished.set()
            bridge.join()
        done = list(results.values())
        return Outcome(
            stopped=stop_event.is_set() or any(r.status == STOPPED for r in done),
            sequences=sum(r.sequences for r in done),
            tokens=sum(r.tokens for r in done),
        )


class _EventProgress:
    """Queue events -> bar advances: each worker's counters are cumulative, so the bar
    moves by the change (negative when a dead worker's unfinished work is taken back;
    the retry reports the rows it skips, so the total never counts a row twice)."""

    def __init__(self, progress: Progress, labels: Sequence[str], say: Callable[[str], None]):
        self.progress = progress
        self.labels = list(labels)
        self.say = say
        self.seen = {slot: (0, 0) for slot in range(len(labels))}

    def __call__(self, event: QueueEvent) -> None:
        slot = event.worker.worker_id
        if event.kind == "unit_failed":
            self.say(
                f"worker {self.labels[slot]} failed ({event.detail}); "
                f"respawning it; unit {event.unit_id} goes back to the queue"
            )
        elif event.kind == "stalled":
            self.say(
                f"worker {self.labels[slot]} made no progress ({event.detail}); killed, "
                f"unit {event.unit_id} goes back to the queue"
            )
        elif event.kind == "retired":
            self.say(f"worker {self.labels[slot]} failed too often; retired")
        sequences, tokens = event.worker.sequences_done, event.worker.tokens_done
        before_sequences, before_tokens = self.seen[slot]
        if (sequences, tokens) != (before_sequences, before_tokens):
            self.seen[slot] = (sequences, tokens)
            self.progress.advance(
                self.labels[slot], sequences - before_sequences, tokens - before_tokens
            )


def _alone(targets: Sequence[Target]) -> list[str] | None:
    """Each GPU worker sees only its GPU (one shared compile cache for the node)."""
    gpus = [target.gpu for target in targets]
    return None if None in gpus else [gpu for gpu in gpus if gpu is not None]


def _forward_stop(should_stop: StopFlag, event: Any, finished: threading.Event) -> None:
    """A signal handler only records the request; pass it on to the workers."""
    while not finished.wait(STOP_POLL_S):
        if should_stop():
            event.set()
            return
