"""Parsing what a person types into the engine's values. The choices are the engine's
(:mod:`virnucpro.infer.job.config`); so are the defaults the commands show."""

from __future__ import annotations

import re
from enum import Enum

from virnucpro.infer.job.config import ALL_LAYERS, AUTO


class InputType(str, Enum):
    protein = "protein"
    dna = "dna"


class Pooling(str, Enum):
    mean = "mean"
    max = "max"
    bos = "bos"
    per_token = "per-token"


class LongMode(str, Enum):
    truncate = "truncate"
    full = "full"
    window = "window"


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


LAYER_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")


def parse_layers(text: str) -> tuple[int, ...] | str | None:
    """fair-esm layer numbers and ranges, comma-separated (``20-33``, ``-4--1``; negative
    counts from the last); ``last`` (None) or ``all``."""
    cleaned = text.strip().lower()
    if cleaned == "last":
        return None
    if cleaned == ALL_LAYERS:
        return ALL_LAYERS
    if not cleaned:
        raise ValueError("is empty: give layers such as 33, -1,-2, 20-33, all or last")
    layers: list[int] = []
    for part in cleaned.split(","):
        layers.extend(_layer_part(part.strip(), text))
    if len(set(layers)) != len(layers):
        raise ValueError(f"a layer is given more than once in {text!r}")
    return tuple(layers)


def _layer_part(part: str, text: str) -> list[int]:
    found = LAYER_RANGE.match(part)
    if found is None:
        try:
            return [int(part)]
        except ValueError:
            raise ValueError(
                f"{text!r} is not a list of layers such as 33, -1,-2, 20-33 or -4--1"
            ) from None
    first, last = int(found.group(1)), int(found.group(2))
    if (first < 0) != (last < 0) or first > last:
        raise ValueError(
            f"range {part!r} in {text!r}: both ends count from the same side and the "
            "first is not after the last (20-33, -4--1); use all for every layer"
        )
    return list(range(first, last + 1))
