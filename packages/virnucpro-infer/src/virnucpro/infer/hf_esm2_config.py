"""An ESM-2 architecture read from a Hugging Face config.json, refusing by name every
setting the packed forward (fair-esm's ESM2 arithmetic) cannot reproduce exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import esm

from virnucpro.infer.hf_sources import CONFIG_FILE, VOCAB_FILE
from virnucpro.infer.models import ModelLoadError

FAIR_ESM_ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")
ESM2_VOCABULARY: tuple[str, ...] = tuple(FAIR_ESM_ALPHABET.all_toks)

# (field, value ESM-2 needs, value assumed when the field is absent, why)
_FIXED: tuple[tuple[str, Any, Any, str], ...] = (
    ("model_type", "esm", None, "an ESM model"),
    ("position_embedding_type", "rotary", "absolute", "ESM-2 uses rotary"),
    ("hidden_act", "gelu", "gelu", "ESM-2 uses erf GELU"),
    ("emb_layer_norm_before", False, False, "ESM-2 has no embedding layer norm"),
    ("is_folding_model", False, False, "pass the ESM-2 language model, not ESMFold"),
    ("is_decoder", False, False, "ESM-2 attends both ways"),
    ("add_cross_attention", False, False, "ESM-2 has no cross-attention"),
    ("layer_norm_eps", 1e-5, 1e-12, "fair-esm's ESM-2 uses 1e-5"),
    ("rope_theta", 10000.0, 10000.0, "ESM-2's rotary base is 10000"),
    ("rope_scaling", None, None, "ESM-2 uses plain rotary"),
    ("vocab_size", len(ESM2_VOCABULARY), None, "ESM-2's vocabulary"),
    ("pad_token_id", FAIR_ESM_ALPHABET.padding_idx, None, "fair-esm's <pad>"),
    ("mask_token_id", FAIR_ESM_ALPHABET.mask_idx, None, "fair-esm's <mask>"),
)


class HFESM2Config(NamedTuple):
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads


def read_hf_esm2_config(folder: Path) -> HFESM2Config:
    """The architecture in ``folder/config.json`` (checked against vocab.txt if present)."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ModelLoadError(f"cannot read {path}: {reason}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is not a Hugging Face config (no JSON object)")
    for field, needed, default, why in _FIXED:
        value = config.get(field, default)
        if not _same(value, needed):
            raise ModelLoadError(
                f"{field} {value!r} in {path} is not supported ({why}: {needed!r})"
            )
    layers = _positive_int(config, "num_hidden_layers", path)
    dim = _positive_int(config, "hidden_size", path)
    heads = _positive_int(config, "num_attention_heads", path)
    if dim % heads or (dim // heads) % 2:
        raise ModelLoadError(
            f"hidden_size {dim} with num_attention_heads {heads} in {path} is not supported "
            "(ESM-2 needs an even head size that divides the width)"
        )
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != dim // heads:
        raise ModelLoadError(
            f"head_dim {head_dim!r} in {path} is not supported (ESM-2 uses {dim // heads})"
        )
    intermediate = config.get("intermediate_size")
    if intermediate != 4 * dim:
        raise ModelLoadError(
            f"intermediate_size {intermediate!r} in {path} is not supported "
            f"(ESM-2 uses 4 x hidden_size = {4 * dim})"
        )
    token_dropout = config.get("token_dropout", False)
    if not isinstance(token_dropout, bool):
        raise ModelLoadError(f"token_dropout {token_dropout!r} in {path} is not a boolean")
    _check_vocabulary(config.get("vocab_list"), f"vocab_list in {path}")
    vocab_file = folder / VOCAB_FILE
    if vocab_file.is_file():
        _check_vocabulary(vocab_file.read_text().split(), str(vocab_file))
    return HFESM2Config(layers, dim, heads, token_dropout)


def _same(value: Any, needed: Any) -> bool:
    if (
        isinstance(needed, float)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return math.isclose(value, needed, rel_tol=1e-9, abs_tol=0.0)
    return type(value) is type(needed) and value == needed


def _positive_int(config: dict, field: str, path: Path) -> int:
    value = config.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{field} {value!r} in {path} is not a positive integer")
    return value


def _check_vocabulary(tokens: Any, where: str) -> None:
    if tokens is None:
        return
    if list(tokens) != list(ESM2_VOCABULARY):
        differ = next(
            (i for i, (a, b) in enumerate(zip(tokens, ESM2_VOCABULARY, strict=False)) if a != b),
            min(len(tokens), len(ESM2_VOCABULARY)),
        )
        raise ModelLoadError(
            f"{where} is not ESM-2's vocabulary in fair-esm's order (first difference at "
            f"token {differ}; ESM-2 has {len(ESM2_VOCABULARY)} tokens)"
        )
