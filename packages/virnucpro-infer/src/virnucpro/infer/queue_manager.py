"""One spawned worker process per device, work handed out in units on demand.

Each worker is bound to the physical device it was given (`devices=[2, 3]` runs on
cuda:2 and cuda:3, set explicitly and reported back by the worker: lesson 7). With
`visible_devices`, each GPU worker sees its own GPU alone, as cuda:0: compiled graphs
then name the same device in every worker and share one compile cache, so a node pays
one cold compilation, not one per GPU. A
worker asks for a unit when it is free, so a fast device takes more units. A worker
that dies (crash, SIGKILL, an exception in its unit) is respawned at once and its
unit re-queued: retry means respawn, never waiting (lesson 11). A worker that makes
no progress for `stall_timeout_s` (stopped, hung in a CUDA call or on NFS) is killed
and treated the same way, with a "stalled" event (lesson 14). A unit that fails
`max_failures` times, or every worker failing `max_failures` times in a row, stops
the run with a `QueueRunError` naming the units involved. Workers die with the
parent, whatever kills it (lesson 16).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from virnucpro.data.parent_death import die_with_parent

DEFAULT_STALL_TIMEOUT_S = 900.0
DEFAULT_STALL_SCALE = 3.0
_REAP_TIMEOUT_S = 10.0

Progress = Callable[..., None]
"""``progress(sequences, tokens=0)``: sequences (and their tokens) finished in the unit."""
UnitHandler = Callable[[Any, Progress], Any]
WorkerFunction = Callable[..., UnitHandler]


class WorkerStatus(str, Enum):
    IDLE = "idle"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkUnit:
    """What one worker does in one go; `payload` goes to the worker's unit handler.

    `description` names what the unit holds (e.g. its first and last ids) so that a
    failure report says which sequences are involved.
    """

    unit_id: int
    payload: Any
    num_sequences: int
    description: str = ""
    attempt: int = 0
    """0 the first time the unit is handed out; one more each time it is re-queued."""


@dataclass
class WorkerState:
    """What the parent knows of one worker; events carry a copy."""

    worker_id: int
    requested_device: str
    device: str | None = None
    pid: int | None = None
    status: WorkerStatus = WorkerStatus.IDLE
    current_unit: int | None = None
    units_done: int = 0
    sequences_done: int = 0
    tokens_done: int = 0
    consecutive_failures: int = 0
    respawns: int = 0


@dataclass(frozen=True)
class QueueEvent:
    """kind: ready, progress, unit_done, stalled, unit_failed or retired.

    `worker.sequences_done` (and `tokens_done`) count finished units plus what was
    reported for the unit in hand; a failed unit's partial progress is taken back.
    A "stalled" event (its worker is then killed, so "unit_failed" follows when it held
    a unit) carries in `seconds` how long the worker went without progress.
    """

    kind: str
    worker: WorkerState
    unit_id: int | None = None
    detail: str = ""
    seconds: float = 0.0


class QueueRunError(RuntimeError):
    """The run stopped: a unit or every worker failed too often in a row."""

    def __init__(self, message: str, units: Sequence[WorkUnit]) -> None:
        super().__init__(message)
        self.units = list(units)


def device_spec(device: int | str | torch.device) -> str:
    """Normalise a device: 2 -> "cuda:2", "cpu" -> "cpu"; a bare "cuda" is refused
    because it would not say which physical device to use."""
    if isinstance(device, int):
        return f"cuda:{device}"
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None:
        raise ValueError("device 'cuda' names no GPU: give its index, e.g. cuda:2 or 2")
    return str(parsed)


class _Worker:
    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.unit: WorkUnit | None = None
        self.unit_progress = 0
        self.unit_tokens = 0
        self.last_error = ""
        self.retired = False
        self.last_sign_of_life = time.monotonic()

    @property
    def watched(self) -> bool:
        """Starting up or working on a unit: expected to report progress."""
        if self.retired or self.process is None:
            return False
        return self.state.device is None or self.state.status is WorkerStatus.PROCESSING

    # Every worker is spawned before it is waited on, served or shut down; these give
    # its process and pipe end from then on.
    @property
    def spawned_process(self) -> BaseProcess:
        if self.process is None:
            raise RuntimeError(f"worker {self.state.worker_id} was never spawned")
        return self.process

    @property
    def spawned_conn(self) -> Connection:
        if self.conn is None:
            raise RuntimeError(f"worker {self.state.worker_id} was never spawned")
        return self.conn


class BatchQueueManager:
    """Runs work units over one spawned process per device and collects their results.

    `worker_function(device, **worker_kwargs)` runs once in each worker process (load
    the model there) and returns the unit handler `handler(payload, progress)`, which
    calls `progress(n)` (or `progress(n, tokens)`) as sequences finish and returns the
    unit's (picklable) result. Both must be importable by name, as spawned processes
    import them. Inside a worker, :func:`current_worker_slot` gives its slot (0 to
    devices - 1), which a respawned worker keeps, and :func:`current_unit_attempt` how
    often the unit being handled was handed out before (0: never, so no other worker
    wrote any of its rows).

    Liveness: a worker holding a unit that sends nothing (progress, done) for the stall
    limit is killed, its unit re-queued. The limit is `stall_timeout_s`, raised to
    `stall_scale` times the longest gap between two signs of life within a unit seen so
    far from any worker, so a slow device or a long batch is not mistaken for a hung
    one. A worker not ready `startup_timeout_s` after its start (default: the stall
    timeout) is killed and respawned the same way.
    """

    def __init__(
        self,
        worker_function: WorkerFunction,
        devices: Sequence[int | str | torch.device],
        worker_kwargs: Mapping[str, Any] | None = None,
        max_failures: int = 3,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        stall_scale: float = DEFAULT_STALL_SCALE,
        startup_timeout_s: float | None = None,
        visible_devices: Sequence[str] | None = None,
    ) -> None:
        if not devices:
            raise ValueError("no devices given: name at least one GPU (or cpu)")
        if stall_timeout_s <= 0 or stall_scale < 1 or (startup_timeout_s or 1) <= 0:
            raise ValueError(
                f"stall and start-up timeouts must be > 0 s and the stall scale >= 1, got "
                f"{stall_timeout_s}, {startup_timeout_s} and {stall_scale}"
            )
        self.worker_function = worker_function
        self.devices = [device_spec(d) for d in devices]
        if visible_devices is not None and len(visible_devices) != len(self.devices):
            raise ValueError("visible_devices needs one CUDA_VISIBLE_DEVICES entry per device")
        self.visible_devices: list[str | None] = (
            list(visible_devices) if visible_devices else [None] * len(self.devices)
        )
        self.worker_kwargs = dict(worker_kwargs or {})
        self.max_failures = max_failures
        self.stall_timeout_s = float(stall_timeout_s)
        self.stall_scale = float(stall_scale)
        self.startup_timeout_s = float(startup_timeout_s or stall_timeout_s)
        self._slowest_gap = 0.0
        self._ctx = multiprocessing.get_context("spawn")
        # CPU workers share the cores instead of each taking all of them.
        cpu_workers = sum(1 for d in self.devices if d == "cpu")
        self._cpu_threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
        self._workers: dict[int, _Worker] = {}
        self._units: list[WorkUnit] = []
        self._pending: deque[WorkUnit] = deque()
        self._results: dict[int, Any] = {}
        self._unit_failures: dict[int, int] = {}
        self._on_event: Callable[[QueueEvent], None] | None = None

    @property
    def num_workers(self) -> int:
        return len(self.devices)

    @property
    def stall_limit_s(self) -> float:
        """Seconds without a sign of life after which a worker counts as stalled."""
        return max(self.stall_timeout_s, self.stall_scale * self._slowest_gap)

    def run(
        self,
        units: Iterable[WorkUnit],
        on_event: Callable[[QueueEvent], None] | None = None,
    ) -> dict[int, Any]:
        """Process every unit; return results by unit id, in the order units were given."""
        self._units = list(units)
        ids = [u.unit_id for u in self._units]
        if len(set(ids)) != len(ids):
            raise ValueError("work unit ids are not unique: give each unit its own id")
        self._pending = deque(self._units)
        self._results = {}
        self._unit_failures = dict.fromkeys(ids, 0)
        self._on_event = on_event
        self._slowest_gap = 0.0
        self._workers = {
            wid: _Worker(WorkerState(wid, device)) for wid, device in enumerate(self.devices)
        }
        finished = False
        try:
            if self._units:
                for worker in self._workers.values():
                    self._spawn(worker)
            while len(self._results) < len(self._units):
                self._serve(self._wait_for_workers())
            finished = True
        finally:
            self._shutdown(graceful=finished)
        return {unit_id: self._results[unit_id] for unit_id in ids}

    def get_worker_status(self) -> dict[int, WorkerStatus]:
        return {wid: w.state.status for wid, w in self._workers.items()}

    def worker_states(self) -> dict[int, WorkerState]:
        return {wid: dataclasses.replace(w.state) for wid, w in self._workers.items()}

    def is_complete(self) -> bool:
        return bool(self._workers) and len(self._results) == len(self._units)

    def _spawn(self, worker: _Worker) -> None:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main,
            args=(
                worker.state.requested_device,
                self.visible_devices[worker.state.worker_id],
                worker.state.worker_id,
                self._cpu_threads,
                self.worker_function,
                self.worker_kwargs,
                child_end,
            ),
            name=f"virnucpro-worker-{worker.state.worker_id}",
        )
        process.start()
        child_end.close()
        worker.process, worker.conn = process, parent_end
        worker.state.pid = process.pid
        worker.state.status = WorkerStatus.IDLE
        worker.last_sign_of_life = time.monotonic()

    def _wait_for_workers(self) -> list[_Worker]:
        live = [w for w in self._workers.values() if not w.retired]
        handles: dict[object, _Worker] = {}
        waitables: list[Connection | int] = []
        for w in live:
            conn, sentinel = w.spawned_conn, w.spawned_process.sentinel
            handles[conn] = handles[sentinel] = w
            waitables += (conn, sentinel)
        ready = wait(waitables, timeout=self._time_to_next_stall())
        return list({id(handles[h]): handles[h] for h in ready}.values())

    def _limit_for(self, worker: _Worker) -> float:
        return self.startup_timeout_s if worker.state.device is None else self.stall_limit_s

    def _time_to_next_stall(self) -> float | None:
        deadlines = [
            w.last_sign_of_life + self._limit_for(w) for w in self._workers.values() if w.watched
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _serve(self, workers: list[_Worker]) -> None:
        self._kill_stalled(exclude=workers)
        for worker in workers:
            alive = self._drain(worker)
            if not alive or not worker.spawned_process.is_alive():
                self._on_death(worker)
        for worker in self._workers.values():
            self._assign(worker)

    def _kill_stalled(self, exclude: list[_Worker]) -> None:
        """Kill every watched worker silent for longer than the limit; it is respawned and
        its unit re-queued like any dead worker's."""
        now = time.monotonic()
        for worker in list(self._workers.values()):
            silent, limit = now - worker.last_sign_of_life, self._limit_for(worker)
            if not worker.watched or silent <= limit or worker in exclude:
                continue
            state = worker.state
            doing = f"unit {state.current_unit}" if worker.unit is not None else "start-up"
            detail = (
                f"worker {state.worker_id} ({state.requested_device}, pid {state.pid}) made no "
                f"progress for {silent:.0f} s in {doing} (limit {limit:.0f} s): killed"
                + (", unit re-queued" if worker.unit is not None else "")
            )
            self._emit("stalled", worker, state.current_unit, detail, seconds=silent)
            worker.spawned_process.kill()
            worker.last_error = f"stalled: no progress for {silent:.0f} s (limit {limit:.0f} s)"
            self._on_death(worker)

    def _sign_of_life(self, worker: _Worker, within_unit: bool) -> None:
        now = time.monotonic()
        if within_unit:
            self._slowest_gap = max(self._slowest_gap, now - worker.last_sign_of_life)
        worker.last_sign_of_life = now

    def _drain(self, worker: _Worker) -> bool:
        """Handle every message waiting from a worker; False once its pipe has closed."""
        try:
            conn = worker.spawned_conn
            while conn.poll():
                self._handle(worker, conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind, *body = message
        state = worker.state
        if kind in ("ready", "progress", "done"):
            self._sign_of_life(worker, within_unit=kind != "ready")
        if kind == "ready":
            state.device, state.pid = body
            self._emit("ready", worker, detail=state.device)
            self._assign(worker)
        elif kind == "progress":
            sequences, tokens = body
            worker.unit_progress += sequences
            worker.unit_tokens += tokens
            state.sequences_done += sequences
            state.tokens_done += tokens
            self._emit("progress", worker, state.current_unit)
        elif kind == "done":
            unit_id, result = body
            self._results[unit_id] = result
            state.units_done += 1
            state.consecutive_failures = 0
            worker.unit, worker.unit_progress, worker.unit_tokens = None, 0, 0
            state.current_unit, state.status = None, WorkerStatus.IDLE
            self._emit("unit_done", worker, unit_id)
            self._assign(worker)
        elif kind == "error":
            worker.last_error = body[0]

    def _assign(self, worker: _Worker) -> None:
        if not self._pending or worker.retired or worker.state.status is not WorkerStatus.IDLE:
            return
        if worker.state.device is None:
            return
        unit = self._pending.popleft()
        worker.unit, worker.unit_progress, worker.unit_tokens = unit, 0, 0
        worker.state.current_unit, worker.state.status = unit.unit_id, WorkerStatus.PROCESSING
        worker.last_sign_of_life = time.monotonic()
        # A worker that died meanwhile is noticed by its sentinel; its unit is re-queued then.
        with contextlib.suppress(OSError):
            worker.spawned_conn.send(unit)

    def _on_death(self, worker: _Worker) -> None:
        # A process in uninterruptible sleep (a hung NFS read) dies only when the call
        # returns; its replacement does not wait for that.
        process = worker.spawned_process
        process.join(timeout=_REAP_TIMEOUT_S)
        state = worker.state
        cause = worker.last_error or _exit_cause(process.exitcode)
        worker.spawned_conn.close()
        worker.last_error = ""
        state.consecutive_failures += 1
        state.sequences_done -= worker.unit_progress
        state.tokens_done -= worker.unit_tokens
        state.status, state.device = WorkerStatus.FAILED, None
        unit, worker.unit = worker.unit, None
        worker.unit_progress, worker.unit_tokens = 0, 0
        state.current_unit = None
        if unit is not None:
            self._unit_failures[unit.unit_id] += 1
            self._pending.appendleft(dataclasses.replace(unit, attempt=unit.attempt + 1))
            self._emit("unit_failed", worker, unit.unit_id, cause)
            if self._unit_failures[unit.unit_id] >= self.max_failures:
                raise QueueRunError(
                    f"unit {unit.unit_id} ({unit.description or 'no description'}) failed "
                    f"{self._unit_failures[unit.unit_id]} times in a row, last on "
                    f"{state.requested_device}: {cause}",
                    [unit],
                )
        if state.consecutive_failures >= self.max_failures:
            worker.retired = True
            self._emit("retired", worker, detail=cause)
            if all(w.retired for w in self._workers.values()):
                held = [self._unit_by_id(i) for i, n in self._unit_failures.items() if n]
                raise QueueRunError(
                    f"every worker failed {self.max_failures} times in a row (last: {cause}); "
                    f"units involved: {_describe(held) or 'none (workers failed at start-up)'}",
                    held,
                )
            return
        state.respawns += 1
        self._spawn(worker)

    def _unit_by_id(self, unit_id: int) -> WorkUnit:
        return next(u for u in self._units if u.unit_id == unit_id)

    def _emit(
        self,
        kind: str,
        worker: _Worker,
        unit_id: int | None = None,
        detail: str = "",
        seconds: float = 0.0,
    ) -> None:
        if self._on_event is not None:
            state = dataclasses.replace(worker.state)
            self._on_event(QueueEvent(kind, state, unit_id, detail, seconds))

    def _shutdown(self, graceful: bool) -> None:
        for worker in self._workers.values():
            if worker.retired or worker.process is None:
                continue
            if graceful:
                with contextlib.suppress(OSError):
                    worker.spawned_conn.send(None)
                worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.spawned_conn.close()
            if graceful and worker.state.status is not WorkerStatus.FAILED:
                worker.state.status = WorkerStatus.COMPLETED


def _describe(units: Sequence[WorkUnit]) -> str:
    return "; ".join(f"unit {u.unit_id} ({u.description or 'no description'})" for u in units)


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker process killed by {signal.Signals(-exitcode).name}"
    return f"worker process exited with code {exitcode}"


def _bind_device(spec: str, visible: str | None, cpu_threads: int) -> tuple[torch.device, str]:
    """Make `spec` this process's device and say which device is actually in use.

    `visible` (a physical GPU id) narrows what this process sees to that GPU, before
    CUDA starts here, and binds it as cuda:0."""
    device = torch.device(spec)
    if device.type != "cuda":
        torch.set_num_threads(cpu_threads)
        return device, str(device)
    if visible is not None:
        if torch.cuda.is_initialized():
            raise RuntimeError("CUDA started before the worker chose its GPU")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
        device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    current = torch.cuda.current_device()
    if current != device.index:
        raise RuntimeError(f"asked for {spec} but CUDA reports cuda:{current} as current")
    alone = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    return device, f"cuda:{current}{alone}"


_worker_slot: int | None = None


def current_worker_slot() -> int | None:
    """This worker process's slot (None outside a queue worker): a stable rank for its
    checkpoint directory, the same after a respawn."""
    return _worker_slot


_unit_attempt = 0


def current_unit_attempt() -> int:
    """The ``attempt`` of the unit this worker is handling (0 outside a queue worker)."""
    return _unit_attempt


def _worker_main(
    spec: str,
    visible: str | None,
    slot: int,
    cpu_threads: int,
    worker_function: WorkerFunction,
    worker_kwargs: dict,
    conn: Connection,
) -> None:
    """A worker process: bind the device, set up once, then handle units until told to stop."""
    global _worker_slot, _unit_attempt
    _worker_slot = slot
    die_with_parent()
    try:
        device, in_use = _bind_device(spec, visible, cpu_threads)
        handler = worker_function(device, **worker_kwargs)
    except Exception as error:
        conn.send(("error", f"start-up on {spec} failed: {_one_line(error)}"))
        sys.exit(1)
    conn.send(("ready", in_use, os.getpid()))
    while True:
        try:
            unit = conn.recv()
        except EOFError:
            return
        if unit is None:
            return
        _unit_attempt = unit.attempt
        try:
            result = handler(unit.payload, lambda n, tokens=0: conn.send(("progress", n, tokens)))
        except Exception as error:
            conn.send(("error", _one_line(error)))
            sys.exit(1)
        conn.send(("done", unit.unit_id, result))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
