"""Packed ESM-2 inference: forward, stream runner, GPU queue manager."""

from virnucpro.infer.attention import (
    ATTENTION_BACKENDS,
    PaddedSDPAAttention,
    SequenceLoopAttention,
    VarlenFlashAttention,
    select_attention,
)
from virnucpro.infer.esm2_loading import fair_esm_cache_dir
from virnucpro.infer.models import (
    ESM2_ARCHITECTURES,
    ESM2Architecture,
    LoadedModel,
    ModelLoadError,
)
from virnucpro.infer.packed import PackedESM2, resolve_layers
from virnucpro.infer.registry import (
    ESM2Backend,
    ModelBackend,
    ModelRegistry,
    PackedForward,
    default_registry,
    load_model,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "ESM2_ARCHITECTURES",
    "ESM2Architecture",
    "ESM2Backend",
    "LoadedModel",
    "ModelBackend",
    "ModelLoadError",
    "ModelRegistry",
    "PackedESM2",
    "PackedForward",
    "PaddedSDPAAttention",
    "SequenceLoopAttention",
    "VarlenFlashAttention",
    "default_registry",
    "fair_esm_cache_dir",
    "load_model",
    "resolve_layers",
    "select_attention",
]
