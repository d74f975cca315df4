"""A background thread writes checkpoints so the GPU never waits for the disk.

The queue is bounded: the producer waits only when ``max_pending`` checkpoints are
already queued (the disk truly fell behind); nothing is ever dropped. A failed write
is raised in the producer at its next call, by ``wait_all`` and by ``shutdown``;
a full disk as DiskFullError (one line: where, how much is needed), anything else as
CheckpointWriteError.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from virnucpro.ckpt.batch import CheckpointBatch, run_store_dtype
from virnucpro.ckpt.checkpoint_file import RUN_KEYS, write_checkpoint_file
from virnucpro.ckpt.errors import CheckpointWriteError, DiskFullError, one_line
from virnucpro.ckpt.layout import checkpoint_path, new_session_id, rank_dir

_POLL_SEC = 0.2


@dataclass
class _Job:
    path: Path
    batch: CheckpointBatch
    attrs: dict[str, Any]


@dataclass
class WriterStats:
    """Counters for benchmarks and logs."""

    checkpoints_written: int = 0
    sequences_written: int = 0
    bytes_written: int = 0
    write_seconds: float = 0.0
    producer_wait_seconds: float = 0.0


class AsyncCheckpointWriter:
    """Writes ``RUN_DIR/checkpoints/rank_{r}/{session}_{seq:05d}.h5`` in the background.

    The writer takes ownership of each batch's arrays: do not change them afterwards.
    """

    def __init__(
        self,
        run_dir: Path,
        manifest: Mapping[str, Any],
        rank: int = 0,
        world_size: int = 1,
        session: str | None = None,
        max_pending: int = 2,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.world_size = world_size
        self.session = session or new_session_id()
        self.stats = WriterStats()
        self._run_attrs = {key: manifest.get(key) for key in RUN_KEYS}
        self._run_attrs["store_dtype"] = run_store_dtype(manifest).name
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_pending)
        self._sequence = 0
        self._pending = 0
        self._errors: list[tuple[str, Exception]] = []
        self._reported = 0
        self._idle = threading.Condition()
        self._closed = False
        rank_dir(self.run_dir, rank).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint-writer-{rank}", daemon=False
        )
        self._thread.start()

    def write_checkpoint_async(
        self,
        batch: CheckpointBatch,
        trigger_reason: str,
        gpu_memory_allocated_bytes: int = 0,
        gpu_memory_peak_bytes: int = 0,
    ) -> Path:
        """Queue ``batch`` for writing and return the path it will have."""
        if self._closed:
            raise CheckpointWriteError("checkpoint writer is shut down")
        self._raise_errors()
        batch.check()
        path = checkpoint_path(self.run_dir, self.rank, self.session, self._sequence)
        attrs = {
            **self._run_attrs,
            "rank": self.rank,
            "world_size": self.world_size,
            "session": self.session,
            "sequence": self._sequence,
            "trigger_reason": trigger_reason,
            "created_at": _now(),
            "gpu_memory_allocated_bytes": int(gpu_memory_allocated_bytes),
            "gpu_memory_peak_bytes": int(gpu_memory_peak_bytes),
        }
        self._sequence += 1
        with self._idle:
            self._pending += 1
        started = time.perf_counter()
        self._queue.put(_Job(path, batch, attrs))
        self.stats.producer_wait_seconds += time.perf_counter() - started
        return path

    @property
    def pending(self) -> int:
        with self._idle:
            return self._pending

    def wait_all(self, timeout: float | None = None) -> None:
        """Block until every queued write finished; raise if one failed or time ran out."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout):
                raise CheckpointWriteError(
                    f"{self._pending} checkpoint writes still pending after {timeout} s"
                )
        self._raise_errors()

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish every pending write, stop the thread, and raise any failure."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise CheckpointWriteError(
                f"{self.pending} checkpoint writes still pending after {timeout} s"
            )
        self._raise_errors()

    def __enter__(self) -> AsyncCheckpointWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.shutdown()
        else:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _raise_errors(self) -> None:
        with self._idle:
            new = self._errors[self._reported :]
            self._reported = len(self._errors)
        full = [exc for _text, exc in new if isinstance(exc, DiskFullError)]
        if full:
            raise DiskFullError(
                f"{full[0]} ({len(new)} checkpoint write(s) failed; their rows will be "
                "computed again on resume)",
                full[0].path,
                full[0].needed_bytes,
            )
        if new:
            raise CheckpointWriteError(
                f"{len(new)} checkpoint write(s) failed: {'; '.join(t for t, _ in new)}; "
                "their rows are not saved and will be computed again on resume"
            )

    def _run(self) -> None:
        main = threading.main_thread()
        while True:
            try:
                job = self._queue.get(timeout=_POLL_SEC)
            except queue.Empty:
                if not main.is_alive():
                    return
                continue
            if job is None:
                return
            self._write(job)

    def _write(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            job.attrs["written_at"] = _now()
            size = write_checkpoint_file(job.path, job.batch, job.attrs)
        except Exception as exc:  # reported to the producer, never swallowed
            with self._idle:
                self._errors.append(
                    (f"{job.path.name}: {type(exc).__name__}: {one_line(exc)}", exc)
                )
        else:
            self.stats.checkpoints_written += 1
            self.stats.sequences_written += len(job.batch)
            self.stats.bytes_written += size
        finally:
            self.stats.write_seconds += time.perf_counter() - started
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
