"""Seeded random weights that are the same on every device and fast for any model size.

Values come from a counter-based integer hash (splitmix64) computed with int64 tensor
arithmetic, which wraps identically on CPU and CUDA: the same seed gives the same
weights whether a run starts on a laptop or on a GPU, and a 3B model fills in a
second on the GPU instead of minutes of CPU initialisation.
"""

from __future__ import annotations

import hashlib
import math

import torch

_MASK64 = (1 << 64) - 1
_CHUNK = 1 << 24


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _stream_key(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return _signed(int.from_bytes(digest[:8], "little"))


@torch.no_grad()
def fill_uniform_(tensor: torch.Tensor, seed: int, name: str, std: float, mean: float = 0.0):
    """Fill `tensor` with uniform values of the given mean and std, keyed by (seed, name)."""
    key = _stream_key(seed, name)
    half_width = std * math.sqrt(3.0)
    flat = tensor.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(start + _CHUNK, flat.numel())
        counter = torch.arange(start, stop, dtype=torch.int64, device=tensor.device)
        bits = _splitmix64(counter * _GOLDEN + key)
        unit = _shift_right(bits, 11).to(torch.float64) * 2.0**-53
        values = (unit * 2.0 - 1.0) * half_width + mean
        flat[start:stop].copy_(values)
    return tensor
