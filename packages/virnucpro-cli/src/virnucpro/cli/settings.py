"""Turning ``auto`` into numbers: device, precision and token budget.

Token budget ``auto`` (tokens per packed batch):

- CPU: ``CPU_TOKEN_BUDGET`` (4096): larger batches gain nothing on a CPU and only delay
  the first checkpoint.
- CUDA: measured after the model is on the GPU, so the weights are already counted:
  ``free * 0.6 / bytes_per_token``, where one token of a forward holds about
  ``(16 + kept layers) * embed_dim`` values in the model's precision (hidden state,
  q/k/v, attention output, the 4x-wide feed-forward, residuals) plus 8 bytes per
  dimension for the float64 prefix sums of mean pooling; rounded down to a multiple of
  1024 and kept between ``max_length + 2`` and ``MAX_TOKEN_BUDGET``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from virnucpro.cli.errors import NoGpuError, UsageError
from virnucpro.cli.gpus import GpuSpec, resolve_gpus
from virnucpro.cli.options import Device, Precision

CPU_TOKEN_BUDGET = 4096
MAX_TOKEN_BUDGET = 262_144
FREE_MEMORY_SHARE = 0.6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Target:
    """One device a run uses (one process each), and the name of its progress bar."""

    device: torch.device
    label: str


def resolve_targets(device: Device, gpus: GpuSpec, processes: int = 1) -> list[Target]:
    """``auto``: every selected GPU if there is one, else the CPU (``processes`` CPU worker
    processes); ``cuda`` (or GPU ids) without a GPU fails. The first target becomes this
    process's current CUDA device."""
    wants_gpu = device is Device.cuda or not gpus.all
    if device is Device.cpu or (not wants_gpu and not torch.cuda.is_available()):
        if processes == 1:
            return [Target(torch.device("cpu"), "cpu")]
        return [Target(torch.device("cpu"), f"cpu{i}") for i in range(processes)]
    if processes != 1:
        raise UsageError(
            "--processes is for CPU runs; on GPUs every selected GPU gets one process "
            "(choose them with --gpus)"
        )
    if not torch.cuda.is_available():
        asked = "--device cuda" if device is Device.cuda else "--gpus"
        raise NoGpuError(f"{asked} but no usable GPU is visible; use --device cpu")
    try:
        chosen = resolve_gpus(
            gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()
        )
    except ValueError as exc:
        raise NoGpuError(f"{exc}; choose GPUs with --gpus") from None
    torch.cuda.set_device(chosen[0].ordinal)
    return [Target(torch.device("cuda", g.ordinal), f"gpu{g.physical_id}") for g in chosen]


def resolve_precision(precision: Precision | str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that has it (fp16 on older ones), fp32 on the CPU."""
    value = Precision(precision)
    if value is not Precision.auto:
        return value.value
    if device.type != "cuda":
        return Precision.fp32.value
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_token_budget(
    requested: int | None,
    device: torch.device,
    embed_dim: int,
    num_layers_kept: int,
    precision: str,
    max_length: int,
) -> int:
    """The requested budget, or the rule of this module's docstring for ``auto``."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    element = torch.finfo(DTYPES[precision]).bits // 8
    per_token = (16 + num_layers_kept) * embed_dim * element + 8 * embed_dim
    budget = int(free * FREE_MEMORY_SHARE / per_token) // 1024 * 1024
    floor = (max_length or 1022) + 2
    return max(floor, min(budget, MAX_TOKEN_BUDGET))
