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


def esm2_parameter_count(num_layers: int, embed_dim: int, vocab_size: int = 33) -> int:
    """Parameters of an ESM-2 (shared embedding/LM head counted once), from its shape:
    what weight memory a run needs before any weights are read."""
    per_layer = 12 * embed_dim * embed_dim + 13 * embed_dim
    heads = embed_dim * embed_dim + 3 * embed_dim + vocab_size  # lm head dense, norm, bias
    return vocab_size * embed_dim + num_layers * per_layer + 2 * embed_dim + heads


@dataclass(frozen=True)
class ModelInfo:
    """What a run records about its model, known without holding the weights in memory.

    A backend's ``describe`` finds it once per run (the sha256 of the weights is read
    then, and only then); every process that computes loads the weights from it.
    ``checksum`` is None for random weights, whose identity is ``(name, seed)``.
    """

    name: str
    source: str
    """The weights file or folder, a hub id with its revision, or ``random``."""
    num_layers: int
    embed_dim: int
    attention_heads: int
    num_parameters: int
    checksum: str | None
    random_weights: bool
    seed: int | None
    backend: str = "esm2"

    def weight_bytes(self, dtype: torch.dtype) -> int:
        return self.num_parameters * torch.finfo(dtype).bits // 8


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for a packed forward and what results must record about it."""

    model: torch.nn.Module
    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    @property
    def checksum(self) -> str | None:
        return self.info.checksum

    @property
    def seed(self) -> int | None:
        return self.info.seed

    @property
    def random_weights(self) -> bool:
        return self.info.random_weights

    @property
    def source(self) -> str:
        return self.info.source
