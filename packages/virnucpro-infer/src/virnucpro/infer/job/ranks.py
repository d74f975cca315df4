"""torchrun ranks, coordinated through torch.distributed, and the one-process stand-in.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
variables) starts one process per GPU. The process group (gloo: it runs everywhere and
only carries a few small messages) is used for coordination alone: rank 0 sets the run
up and broadcasts what every rank needs, and one all-reduce after the work tells every
rank whether anyone stopped and how much was done. No file is polled. Without torchrun
:class:`Solo` answers the same two calls in-process, so the engine never branches on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from virnucpro.infer.job.errors import ConfigError, JobError
from virnucpro.infer.job.watch import RankWatch

T = TypeVar("T")
BACKEND = "gloo"
COLLECTIVE_TIMEOUT = timedelta(days=7)
"""A rank that finishes early waits in the final all-reduce for the slowest one; a dead
peer is noticed at once (its connection closes), and a hung one by the rank watch
(``Placement.stall_timeout``), which ends the job long before this."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks torchrun started."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def lead(self) -> bool:
        return self.rank == 0


def torchrun_world(environ: Mapping[str, str] | None = None) -> World | None:
    """The world from torchrun's variables; None when this is not one of several ranks."""
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    try:
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except (KeyError, ValueError):
        raise ConfigError(
            f"WORLD_SIZE={size} but RANK/LOCAL_RANK are missing or not numbers: "
            "start several ranks with torchrun"
        ) from None
    return World(rank, size, local_rank, local_size)


class RankFailedError(JobError):
    """Rank 0 failed while setting the run up; every other rank stops with its line,
    as the same kind of error (``kind``: the class name rank 0 raised)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Unwatched:
    def progressed(self) -> None:
        pass

    def done(self) -> None:
        pass

    def __enter__(self) -> _Unwatched:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class Solo:
    """One process: sharing is calling, summing is returning, nobody to watch."""

    world = World(0, 1, 0, 1)

    def watch(self, timeout: float, say: Callable[[str], None]) -> _Unwatched:
        return _Unwatched()

    def share(self, produce: Callable[[], T] | None) -> T:
        assert produce is not None
        return produce()

    def sum(self, *values: int) -> list[int]:
        return list(values)

    def __enter__(self) -> Solo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class Coordinator:
    """The process group for the life of a run (a context manager)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> Coordinator:
        import torch.distributed as dist

        dist.init_process_group(
            BACKEND,
            rank=self.world.rank,
            world_size=self.world.size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()

    def watch(self, timeout: float, say: Callable[[str], None]) -> RankWatch:
        """Every rank's progress, watched by every rank (see :mod:`.watch`)."""
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
        return RankWatch(store, self.world.rank, self.world.size, timeout, say)

    def share(self, produce: Callable[[], T] | None) -> T:
        """Rank 0 runs ``produce`` and every rank gets its value; if it raises, rank 0
        re-raises and the others raise :class:`RankFailedError` with the same line."""
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.world.lead:
            assert produce is not None
            try:
                box[0] = ("ok", produce())
            except BaseException as exc:
                message = exc.message if isinstance(exc, JobError) else f"{exc}"
                dist.broadcast_object_list([("failed", message, type(exc).__name__)], src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, *body = box[0]
        if kind == "failed":
            message, name = body
            raise RankFailedError(f"rank 0: {message}", name)
        return body[0]

    def sum(self, *values: int) -> list[int]:
        """Every rank's ``values`` added up, on every rank (also a barrier)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(v) for v in tensor.tolist()]
