"""ESM-2 models by name (fair-esm's cache and download), by path, or with seeded random
weights. Files are built with fair-esm's own `load_model_and_alphabet_core`, so its key
upgrade logic applies exactly as when fair-esm loads them itself."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from esm.model.esm2 import ESM2
from esm.pretrained import load_model_and_alphabet_core

from virnucpro.infer.models import ESM2_ARCHITECTURES, LoadedModel, ModelLoadError
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


def load_esm2_file(path: Path, name: str | None = None) -> LoadedModel:
    """Build an ESM-2 from a `.pt` in fair-esm's published format (regression file optional)."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; pass a fair-esm ESM-2 .pt file")
    model_data = load_weights_file(path)
    config = model_data.get("cfg", {})
    if not isinstance(config, dict) or "model" not in config or "model" not in model_data:
        raise ModelLoadError(
            f"{path} is not an ESM-2 checkpoint in fair-esm's format (needs 'cfg' and 'model')"
        )
    regression_path = regression_path_for(path)
    regression_data = load_weights_file(regression_path) if regression_path.is_file() else None
    model_name = name or path.stem
    # fair-esm picks its ESM-2 builder by the name's prefix; the format was checked above.
    core_name = model_name if model_name.startswith("esm2") else f"esm2_{model_name}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, _alphabet = load_model_and_alphabet_core(core_name, model_data, regression_data)
    except (RuntimeError, AttributeError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise ModelLoadError(f"{path} does not build an ESM-2 model: {reason[:300]}") from None
    model.eval()
    return LoadedModel(
        model=model,
        name=model_name,
        num_layers=model.num_layers,
        embed_dim=model.embed_dim,
        checksum=sha256_of_file(path),
        seed=None,
        random_weights=False,
        source=str(path),
    )


def load_esm2_named(
    name: str,
    model_url: str = FAIR_ESM_MODEL_URL,
    regression_url: str = FAIR_ESM_REGRESSION_URL,
) -> LoadedModel:
    """Load a published ESM-2 from fair-esm's cache, downloading it there if absent."""
    _check_known(name)
    weights_path = fair_esm_cache_dir() / f"{name}.pt"
    if not weights_path.is_file():
        _download_published(name, weights_path, model_url, regression_url)
    return load_esm2_file(weights_path, name=name)


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
            raise ModelLoadError(
                f"{name} is not in {weights_path.parent} and downloading {url} failed "
                f"({reason}); put {weights_path.name} there or pass the path to the .pt file"
            ) from None


def _check_known(name: str) -> None:
    if name not in ESM2_ARCHITECTURES:
        known = ", ".join(ESM2_ARCHITECTURES)
        raise ModelLoadError(f"unknown ESM-2 model {name!r}; choose one of {known}, or a .pt path")


def _random_spec(name: str) -> tuple[float, float]:
    """(mean, std) of a random parameter: unit-gain LayerNorms with some spread, linear
    weights scaled by fan-in so activations neither vanish nor explode over depth."""
    if name == "embed_tokens.weight":
        return 0.0, 1.0
    if "layer_norm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.02)
    return 0.0, 0.02


def build_random_esm2(name: str, seed: int, device: torch.device | str = "cpu") -> LoadedModel:
    """The named ESM-2 architecture with seeded random weights, built on `device` directly."""
    _check_known(name)
    arch = ESM2_ARCHITECTURES[name]
    with torch.device("meta"):
        model = ESM2(arch.num_layers, arch.embed_dim, arch.attention_heads, token_dropout=True)
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
    model.eval()
    return LoadedModel(
        model=model,
        name=name,
        num_layers=arch.num_layers,
        embed_dim=arch.embed_dim,
        checksum=None,
        seed=seed,
        random_weights=True,
        source="random",
    )
