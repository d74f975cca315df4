"""Tiny fair-esm ESM-2 models with every parameter random (LayerNorms included, so a
missing or misplaced norm cannot hide behind ones and zeros), and packing helpers."""

from __future__ import annotations

import esm
import pytest
import torch
from esm.model.esm2 import ESM2

ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")


def build_tiny_esm2(
    num_layers: int, embed_dim: int, heads: int, seed: int = 0, token_dropout: bool = True
) -> ESM2:
    generator = torch.Generator().manual_seed(seed)
    model = ESM2(num_layers, embed_dim, heads, alphabet=ALPHABET, token_dropout=token_dropout)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "layer_norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * noise)
            elif name == "embed_tokens.weight":
                param.copy_(noise)
            elif param.ndim == 2:
                param.copy_(noise * param.shape[1] ** -0.5)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


@pytest.fixture(scope="session")
def make_esm2():
    """Factory: make_esm2(num_layers, embed_dim, heads, seed=0, token_dropout=True)."""
    return build_tiny_esm2


def tokens_of(sequence: str) -> torch.Tensor:
    """BOS + tokens + EOS, exactly as fair-esm's batch converter encodes one sequence."""
    _, _, tokens = ALPHABET.get_batch_converter()([("s", sequence)])
    return tokens[0]


def pack(sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor, int, list[torch.Tensor]]:
    """(input_ids, int32 cu_seqlens, max_seqlen, per-sequence token tensors)."""
    parts = [tokens_of(sequence) for sequence in sequences]
    lengths = [part.numel() for part in parts]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return torch.cat(parts), cu_seqlens, max(lengths), parts


def fair_esm_reference(model: ESM2, tokens: torch.Tensor, layers: list[int]) -> dict:
    """fair-esm's own forward on one sequence alone: {layer: (L, D)}."""
    with torch.no_grad():
        out = model(tokens[None], repr_layers=layers)["representations"]
    return {layer: value[0] for layer, value in out.items()}


@pytest.fixture(scope="session")
def packing():
    """Helpers as a namespace: pack, tokens_of, fair_esm_reference."""

    class Packing:
        pass

    helpers = Packing()
    helpers.pack = pack
    helpers.tokens_of = tokens_of
    helpers.reference = fair_esm_reference
    return helpers
