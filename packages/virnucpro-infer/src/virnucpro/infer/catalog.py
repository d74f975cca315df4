"""What `virnucpro models` shows: the published ESM-2 sizes, where each is cached on
this machine, and whether it fits on the visible GPUs; and the check that refuses a
model too large for the chosen GPU before a run starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from virnucpro.infer.esm2_loading import fair_esm_cache_dir
from virnucpro.infer.hf_sources import find_cached_hf_esm2
from virnucpro.infer.job.errors import ModelTooLargeError
from virnucpro.infer.models import ESM2_ARCHITECTURES, ModelInfo, esm2_parameter_count

HF_ORG = "facebook"
ACTIVATION_HEADROOM = 1.15
"""Weights plus at least this share again for one batch of activations and the caches."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hub_id: str
    num_layers: int
    embed_dim: int
    num_parameters: int
    bf16_bytes: int
    cached: list[str] = field(default_factory=list)
    """Local copies: a fair-esm .pt file, Hugging Face snapshot folders."""
    fits: list[str] = field(default_factory=list)
    """Visible GPUs (by index and name) whose memory holds it in bf16."""


def visible_gpus() -> list[tuple[str, int]]:
    """(label, total bytes) of every GPU this process sees."""
    if not torch.cuda.is_available():
        return []
    found = []
    for ordinal in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(ordinal)
        found.append((f"cuda:{ordinal} {properties.name}", int(properties.total_memory)))
    return found


def model_catalog() -> list[CatalogEntry]:
    cached_hf: dict[str, list[str]] = {}
    for model in find_cached_hf_esm2():
        cached_hf.setdefault(model.hub_id, []).append(str(model.path))
    gpus = visible_gpus()
    entries = []
    for name, arch in ESM2_ARCHITECTURES.items():
        parameters = esm2_parameter_count(arch.num_layers, arch.embed_dim)
        bf16 = parameters * 2
        pt = fair_esm_cache_dir() / f"{name}.pt"
        hub_id = f"{HF_ORG}/{name}"
        entries.append(
            CatalogEntry(
                name=name,
                hub_id=hub_id,
                num_layers=arch.num_layers,
                embed_dim=arch.embed_dim,
                num_parameters=parameters,
                bf16_bytes=bf16,
                cached=([str(pt)] if pt.is_file() else []) + cached_hf.get(hub_id, []),
                fits=[label for label, total in gpus if bf16 * ACTIVATION_HEADROOM <= total],
            )
        )
    return entries


def check_fits(
    model: ModelInfo, device: torch.device, dtype: torch.dtype, total: int | None = None
) -> None:
    """Refuse, before any work, a model whose weights cannot fit on ``device`` (of
    ``total`` bytes; by default what the GPU reports)."""
    if device.type != "cuda":
        return
    if total is None:
        total = int(torch.cuda.get_device_properties(device).total_memory)
    needed = model.weight_bytes(dtype) * ACTIVATION_HEADROOM
    if needed > total:
        smaller = [
            name
            for name, arch in ESM2_ARCHITECTURES.items()
            if esm2_parameter_count(arch.num_layers, arch.embed_dim) * 2 * ACTIVATION_HEADROOM
            <= total
        ]
        raise ModelTooLargeError(
            f"{model.name} needs about {needed / 2**30:.1f} GiB in {dtype} (weights and one "
            f"batch) but {device} has {total / 2**30:.1f} GiB: use a larger GPU or a smaller "
            f"model ({', '.join(smaller) or 'none fits'}; `virnucpro models` lists them)"
        )
