"""ESM-2 architectures fair-esm publishes, and what a loaded model records about itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one line saying what to do."""


class ESM2Architecture(NamedTuple):
    num_layers: int
    embed_dim: int
    attention_heads: int


ESM2_ARCHITECTURES: dict[str, ESM2Architecture] = {
    "esm2_t6_8M_UR50D": ESM2Architecture(6, 320, 20),
    "esm2_t12_35M_UR50D": ESM2Architecture(12, 480, 20),
    "esm2_t30_150M_UR50D": ESM2Architecture(30, 640, 20),
    "esm2_t33_650M_UR50D": ESM2Architecture(33, 1280, 20),
    "esm2_t36_3B_UR50D": ESM2Architecture(36, 2560, 40),
    "esm2_t48_15B_UR50D": ESM2Architecture(48, 5120, 40),
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for a packed forward, with what results must record about it.

    `checksum` is the sha256 of the weights file (None for random weights), so a
    resumed run can refuse different weights under the same name.
    """

    model: torch.nn.Module
    name: str
    num_layers: int
    embed_dim: int
    checksum: str | None
    seed: int | None
    random_weights: bool
    source: str
    backend: str = "esm2"
