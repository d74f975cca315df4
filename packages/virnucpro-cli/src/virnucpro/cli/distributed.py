"""Many nodes: the ranks torchrun starts, coordinated through torch.distributed.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
variables) starts one ``virnucpro`` per GPU. The process group (gloo: it runs
everywhere and only carries a few small messages) is used for coordination alone:
rank 0 sets the run up and broadcasts the manifest and the done set, and one
all-reduce after the work tells every rank whether anyone stopped and how much was
done. No file is polled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from virnucpro.cli.errors import (
    CliError,
    ExitCode,
    NoGpuError,
    UsageError,
    describe_unexpected,
    translate,
)
from virnucpro.cli.failures import translate_pipeline_error
from virnucpro.cli.options import Device, Placement
from virnucpro.cli.settings import Target

T = TypeVar("T")
BACKEND = "gloo"
COLLECTIVE_TIMEOUT = timedelta(days=7)
"""A rank that finishes early waits in the final all-reduce for the slowest one; a dead
peer is noticed at once (its connection closes), so only a hung one waits this long."""


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
        raise UsageError(
            f"WORLD_SIZE={size} but RANK/LOCAL_RANK are missing or not numbers: "
            "start several ranks with torchrun"
        ) from None
    return World(rank, size, local_rank, local_size)


def rank_target(placement: Placement, world: World) -> Target:
    """Each rank uses GPU LOCAL_RANK of what it sees (or a share of the CPU cores)."""
    if not placement.gpus.all or placement.processes != 1:
        raise UsageError(
            "under torchrun every rank uses GPU LOCAL_RANK: leave out --gpus and --processes "
            "(set CUDA_VISIBLE_DEVICES to choose a node's GPUs)"
        )
    use_gpu = placement.device is Device.cuda or (
        placement.device is Device.auto and torch.cuda.is_available()
    )
    if not use_gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
        return Target(torch.device("cpu"), f"rank{world.rank}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world.local_rank >= count:
        raise NoGpuError(
            f"rank {world.rank} needs GPU {world.local_rank} (LOCAL_RANK) but sees {count}; "
            "start at most one rank per GPU (--nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return Target(torch.device("cuda", world.local_rank), f"rank{world.rank}")


class RankFailedError(CliError):
    """Rank 0 could not set the run up; every other rank stops with its message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


class Coordinator:
    """The process group for the life of a run (a context manager)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> Coordinator:
        dist.init_process_group(
            BACKEND,
            rank=self.world.rank,
            world_size=self.world.size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        dist.destroy_process_group()

    def share(self, produce: Callable[[], T] | None) -> T:
        """Rank 0 runs ``produce`` and every rank gets its value; if it raises, rank 0
        re-raises and the others raise :class:`RankFailedError` with the same line."""
        box: list[Any] = [None]
        if self.world.lead:
            assert produce is not None
            try:
                box[0] = ("ok", produce())
            except BaseException as exc:
                dist.broadcast_object_list([("failed", *_describe(exc))], src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, *body = box[0]
        if kind == "failed":
            message, code = body
            raise RankFailedError(f"rank 0: {message}", code)
        return body[0]

    def sum(self, *values: int) -> list[int]:
        """Every rank's ``values`` added up, on every rank (also a barrier)."""
        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(v) for v in tensor.tolist()]


def _describe(exc: BaseException) -> tuple[str, int]:
    known = translate_pipeline_error(exc) if isinstance(exc, Exception) else None
    known = known or translate(exc)
    if known is None:
        return describe_unexpected(exc), int(ExitCode.INTERNAL)
    return known.message, int(known.exit_code)
