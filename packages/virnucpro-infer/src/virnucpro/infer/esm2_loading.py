"""ESM-2 models by name (fair-esm's cache and download), by path, or with seeded random
weights. Files are built with fair-esm's own `load_model_and_alphabet_core`, so its key
upgrade logic applies exactly as when fair-esm loads them itself."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from esm.model.esm2 import ESM2
from esm.pretrained import load_model_and_alphabet_core

from virnucpro.infer.models import (
    ESM2_ARCHITECTURES,
    ModelInfo,
    ModelLoadError,
    esm2_parameter_count,
)
from virnucpro.infer.seeded_weights import fill_uniform_
from virnucpro.infer.weights_files import download_file, load_weights_file, sha256_of_file

FAIR_ESM_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
FAIR_ESM_REGRESSION_URL = (
    "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"
)
_REGRESSION_SUFFIX = "-contact-regression.pt"


def fair_esm_cache_dir() -> Path:
    """Where fair-esm's `torch.hub` download puts (and looks for) checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def regression_path_for(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.stem + _REGRESSION_SUFFIX)


def describe_esm2_file(path: Path, name: str | None = None) -> ModelInfo:
    """The architecture from a fair-esm `.pt`'s config, and the file's sha256."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; pass a fair-esm ESM-2 .pt file")
    config = _esm2_config(load_weights_file(path, mmap=True), path)
    layers, dim = int(config.encoder_layers), int(config.encoder_embed_dim)
    return ModelInfo(
        name=name or path.stem,
        source=str(path),
        num_layers=layers,
        embed_dim=dim,
        attention_heads=int(config.encoder_attention_heads),
        num_parameters=esm2_parameter_count(layers, dim),
        checksum=sha256_of_file(path),
        random_weights=False,
        seed=None,
    )


def _esm2_config(model_data: dict, path: Path) -> Any:
    config = model_data.get("cfg", {})
    if not isinstance(config, dict) or "model" not in config or "model" not in model_data:
        raise ModelLoadError(
            f"{path} is not an ESM-2 checkpoint in fair-esm's format (needs 'cfg' and 'model')"
        )
    fields = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")
    if not all(hasattr(config["model"], field) for field in fields):
        raise ModelLoadError(f"{path} is not an ESM-2 checkpoint (its config lacks {fields})")
    return config["model"]


def load_esm2_file(info: ModelInfo) -> torch.nn.Module:
    """Build the ESM-2 that ``info`` describes from its `.pt` (regression file optional)."""
    path = Path(info.source)
    model_data = load_weights_file(path)
    _esm2_config(model_data, path)
    regression_path = regression_path_for(path)
    regression_data = load_weights_file(regression_path) if regression_path.is_file() else None
    # fair-esm picks its ESM-2 builder by the name's prefix; the format was checked above.
    core_name = info.name if info.name.startswith("esm2") else f"esm2_{info.name}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, _alphabet = load_model_and_alphabet_core(core_name, model_data, regression_data)
    except (RuntimeError, AttributeError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise ModelLoadError(f"{path} does not build an ESM-2 model: {reason[:300]}") from None
    return model.eval()


def describe_esm2_named(
    name: str,
    model_url: str = FAIR_ESM_MODEL_URL,
    regression_url: str = FAIR_ESM_REGRESSION_URL,
) -> ModelInfo:
    """A published ESM-2 from fair-esm's cache, downloaded there first if absent."""
    _check_known(name)
    weights_path = fair_esm_cache_dir() / f"{name}.pt"
    if not weights_path.is_file():
        _download_published(name, weights_path, model_url, regression_url)
    return describe_esm2_file(weights_path, name=name)


def _download_published(name: str, weights_path: Path, model_url: str, regression_url: str):
    downloads = [
        (regression_url.format(name=name), regression_path_for(weights_path)),
        (model_url.format(name=name), weights_path),
    ]
    for url, destination in downloads:
        try:
            download_file(url, destination)
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            smaller = ", ".join(n for n in ESM2_ARCHITECTURES if n != name)
            raise ModelLoadError(
                f"{name} is not in {weights_path.parent} and downloading {url} failed "
                f"({reason}); put {weights_path.name} there, pass the path to the .pt file, "
                f"choose another model ({smaller}) or use --random-weights for a demo"
            ) from None


def _check_known(name: str) -> None:
    if name not in ESM2_ARCHITECTURES:
        known = ", ".join(ESM2_ARCHITECTURES)
        raise ModelLoadError(f"unknown ESM-2 model {name!r}; choose one of {known}, or a .pt path")


def describe_random_esm2(name: str, seed: int) -> ModelInfo:
    """The named architecture with seeded random weights (no file, no checksum)."""
    _check_known(name)
    arch = ESM2_ARCHITECTURES[name]
    return ModelInfo(
        name=name,
        source="random",
        num_layers=arch.num_layers,
        embed_dim=arch.embed_dim,
        attention_heads=arch.attention_heads,
        num_parameters=esm2_parameter_count(arch.num_layers, arch.embed_dim),
        checksum=None,
        random_weights=True,
        seed=seed,
    )


def _random_spec(name: str) -> tuple[float, float]:
    """(mean, std) of a random parameter: unit-gain LayerNorms with some spread, linear
    weights scaled by fan-in so activations neither vanish nor explode over depth."""
    if name == "embed_tokens.weight":
        return 0.0, 1.0
    if "layer_norm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.02)
    return 0.0, 0.02


def build_random_esm2(info: ModelInfo, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The architecture of ``info`` with its seeded random weights, built on `device`."""
    seed = info.seed or 0
    with torch.device("meta"):
        model = ESM2(info.num_layers, info.embed_dim, info.attention_heads, token_dropout=True)
    model.to_empty(device=device)
    model.lm_head.weight = model.embed_tokens.weight  # to_empty unties fair-esm's tied weights
    for param_name, param in model.named_parameters():
        mean, std = _random_spec(param_name)
        if param.ndim == 2 and param_name != "embed_tokens.weight":
            std = param.shape[1] ** -0.5
        fill_uniform_(param.data, seed, param_name, std=std, mean=mean)
    with torch.no_grad():
        model.embed_tokens.weight[model.padding_idx].zero_()
        for layer in model.layers:
            rotary = layer.self_attn.rot_emb
            dim = layer.self_attn.head_dim
            inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
            rotary.inv_freq.copy_(inv_freq)
    return model.eval()
