"""The validated options of ``run`` and ``resume``: what the pipeline receives."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from virnucpro.cli.gpus import ALL_GPUS, GpuSpec

DEFAULT_MODEL = "esm2_t36_3B_UR50D"
DEFAULT_MAX_LENGTH = 1022
DEFAULT_CHECKPOINT_EVERY = 10_000
DEFAULT_CHECKPOINT_INTERVAL = 300.0
DEFAULT_CHUNK_SIZE = 300
CHUNK_SIZES = (300, 500)
AUTO = "auto"


class InputType(str, Enum):
    protein = "protein"
    dna = "dna"


class Pooling(str, Enum):
    mean = "mean"
    bos = "bos"
    per_token = "per-token"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def parse_token_budget(text: str) -> int | None:
    """A positive number of tokens per batch, or None for ``auto`` (from free GPU memory)."""
    cleaned = text.strip().lower().replace("_", "")
    if cleaned == AUTO:
        return None
    if not cleaned.isdigit() or int(cleaned) < 1:
        raise ValueError(f"{text!r} is not a positive number of tokens or 'auto'")
    return int(cleaned)


def parse_layers(text: str) -> tuple[int, ...] | None:
    """Comma-separated fair-esm layer numbers (negative counts from the last); None = last."""
    cleaned = text.strip().lower()
    if cleaned in ("", "last"):
        return None
    try:
        layers = tuple(int(part) for part in cleaned.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a list of layer numbers such as 33 or -1,-2") from None
    if len(set(layers)) != len(layers):
        raise ValueError(f"a layer is given more than once in {text!r}")
    return layers


def resolve_layers(layers: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
    """Layers in fair-esm numbering (0 = embeddings, ``num_layers`` = last), sorted."""
    if layers is None:
        return (num_layers,)
    resolved = []
    for layer in layers:
        number = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= number <= num_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{num_layers}")
        resolved.append(number)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {layers} name the same layer twice")
    return tuple(sorted(resolved))


@dataclass(frozen=True)
class Placement:
    """Where and how fast to run; may differ between a run and its resumption."""

    device: Device = Device.auto
    gpus: GpuSpec = ALL_GPUS
    workers: int = 2
    processes: int = 1
    """CPU runs: worker processes through the multi-device queue (GPUs: one per GPU)."""


@dataclass(frozen=True)
class RunOptions:
    """Everything ``virnucpro run`` was asked to do."""

    inputs: tuple[Path, ...]
    run_dir: Path
    model: str = DEFAULT_MODEL
    random_weights: bool = False
    seed: int = 0
    input_type: InputType = InputType.protein
    chunk_size: int = DEFAULT_CHUNK_SIZE
    layers: tuple[int, ...] | None = None
    pooling: tuple[Pooling, ...] = (Pooling.mean,)
    precision: Precision = Precision.auto
    token_budget: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    force: bool = False
    placement: Placement = Placement()


@dataclass(frozen=True)
class ResumeOptions:
    """``virnucpro resume``: the configuration comes from the run's manifest."""

    run_dir: Path
    placement: Placement = Placement()
