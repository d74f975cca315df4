"""Parsing what a person types into the engine's values. The choices are the engine's
(:mod:`virnucpro.infer.job.config`); so are the defaults the commands show."""

from __future__ import annotations

from enum import Enum

from virnucpro.infer.job.config import AUTO


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
    if cleaned == "last":
        return None
    if not cleaned:
        raise ValueError("is empty: give layer numbers such as 33 or -1,-2, or 'last'")
    try:
        layers = tuple(int(part) for part in cleaned.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a list of layer numbers such as 33 or -1,-2") from None
    if len(set(layers)) != len(layers):
        raise ValueError(f"a layer is given more than once in {text!r}")
    return layers
