"""Turning ``auto`` into devices and numbers, once per session: targets, precision,
token budget.

Token budget ``auto`` (tokens per packed batch):

- CPU: ``CPU_TOKEN_BUDGET`` (4096): larger batches gain nothing on a CPU and only delay
  the first checkpoint.
- CUDA: from the first target's free memory before the model is there, less the
  weights' bytes: ``(free - weights) * 0.6 / bytes_per_token``, where one token of a
  forward holds about ``(16 + kept layers) * embed_dim`` values in the run's precision
  (hidden state, q/k/v, attention output, the 4x-wide feed-forward, residuals) plus 8
  bytes per dimension for the float64 prefix sums of mean pooling; rounded down to a
  multiple of 1024 and kept between ``max_length + 2`` and ``MAX_TOKEN_BUDGET``. No
  process has to load the model to plan, so the parent of several GPU workers never
  holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from virnucpro.infer.job.config import AUTO, Placement
from virnucpro.infer.job.errors import ConfigError, NoDeviceError
from virnucpro.infer.job.gpus import resolve_gpus
from virnucpro.infer.job.ranks import World
from virnucpro.infer.models import ModelInfo

CPU_TOKEN_BUDGET = 4096
MAX_TOKEN_BUDGET = 262_144
FREE_MEMORY_SHARE = 0.6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Target:
    """One device a session uses (one process each), and the name of its progress bar."""

    device: torch.device
    label: str
    gpu: str | None = None
    """The physical GPU id (what ``CUDA_VISIBLE_DEVICES`` names), for CUDA targets."""


def resolve_targets(placement: Placement) -> list[Target]:
    """``auto``: every selected GPU if there is one, else the CPU (``processes`` CPU worker
    processes); ``cuda`` (or GPU ids) without a GPU fails. The first target becomes this
    process's current CUDA device."""
    wants_gpu = placement.device == "cuda" or not placement.gpus.all
    if placement.device == "cpu" or (not wants_gpu and not torch.cuda.is_available()):
        if placement.processes == 1:
            return [Target(torch.device("cpu"), "cpu")]
        return [Target(torch.device("cpu"), f"cpu{i}") for i in range(placement.processes)]
    if placement.processes != 1:
        raise ConfigError(
            "processes: for CPU runs; on GPUs every selected GPU gets one process "
            "(choose them with gpus)"
        )
    if not torch.cuda.is_available():
        asked = "device cuda" if placement.device == "cuda" else "GPU ids"
        raise NoDeviceError(f"{asked} asked for, but no usable GPU is visible; use device cpu")
    try:
        chosen = resolve_gpus(
            placement.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()
        )
    except ValueError as exc:
        raise NoDeviceError(f"{exc}; choose GPUs with --gpus") from None
    torch.cuda.set_device(chosen[0].ordinal)
    return [
        Target(torch.device("cuda", g.ordinal), f"gpu{g.physical_id}", g.physical_id)
        for g in chosen
    ]


def rank_target(placement: Placement, world: World) -> Target:
    """Each torchrun rank uses GPU LOCAL_RANK of what it sees (or a share of the CPU)."""
    if not placement.gpus.all or placement.processes != 1:
        raise ConfigError(
            "under torchrun every rank uses GPU LOCAL_RANK: leave out --gpus and --processes "
            "(set CUDA_VISIBLE_DEVICES to choose a node's GPUs)"
        )
    use_gpu = placement.device == "cuda" or (placement.device == AUTO and torch.cuda.is_available())
    if not use_gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
        return Target(torch.device("cpu"), f"rank{world.rank}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world.local_rank >= count:
        raise NoDeviceError(
            f"rank {world.rank} needs GPU {world.local_rank} (LOCAL_RANK) but sees {count}; "
            "start at most one rank per GPU (--nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return Target(torch.device("cuda", world.local_rank), f"rank{world.rank}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that has it (fp16 on older ones), fp32 on the CPU."""
    if precision != AUTO:
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_token_budget(
    requested: int | None,
    device: torch.device,
    model: ModelInfo,
    num_layers_kept: int,
    precision: str,
    max_length: int,
) -> int:
    """The requested budget, or the rule of this module's docstring for ``auto``."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    dtype = DTYPES[precision]
    free, _total = torch.cuda.mem_get_info(device)
    free -= model.weight_bytes(dtype)
    element = torch.finfo(dtype).bits // 8
    per_token = (16 + num_layers_kept) * model.embed_dim * element + 8 * model.embed_dim
    budget = int(max(free, 0) * FREE_MEMORY_SHARE / per_token) // 1024 * 1024
    floor = (max_length or 1022) + 2
    return max(floor, min(budget, MAX_TOKEN_BUDGET))
