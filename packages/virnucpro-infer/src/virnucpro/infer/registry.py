"""The model registry: which backend loads a model spec and runs its packed forward.

A backend is a loader plus a packed forward. Plugins register more through the
``virnucpro_register_models`` hook; ESM-2 through fair-esm is built in. `resolve` asks
the most recently registered backend first, so a plugin can take over specs a built-in
also matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from virnucpro.infer.esm2_loading import (
    FAIR_ESM_MODEL_URL,
    FAIR_ESM_REGRESSION_URL,
    build_random_esm2,
    describe_esm2_file,
    describe_esm2_named,
    describe_random_esm2,
    load_esm2_file,
)
from virnucpro.infer.models import ESM2_ARCHITECTURES, LoadedModel, ModelInfo, ModelLoadError
from virnucpro.infer.packed import PackedESM2

PackedForward = Callable[[torch.Tensor, torch.Tensor, int, Iterable[int]], dict[int, torch.Tensor]]


@runtime_checkable
class ModelBackend(Protocol):
    """What a model plugin provides: ``describe`` once per run, ``load`` in every
    process that computes, from what ``describe`` found."""

    name: str

    def matches(self, spec: str) -> bool:
        """Whether this backend understands `spec` (a model name, path or hub id)."""

    def describe(self, spec: str, random_weights: bool = False, seed: int = 0) -> ModelInfo:
        """The model's architecture and weights checksum, without keeping weights in memory."""

    def load(
        self,
        info: ModelInfo,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LoadedModel:
        """The weights ``info`` describes (no second checksum), on device in dtype."""

    def packed_forward(self, loaded: LoadedModel, *, compile: bool = False) -> PackedForward:
        """A callable (input_ids, cu_seqlens, max_seqlen, repr_layers) -> {layer: (T, D)};
        ``compile``: the engine asks for a compiled one on CUDA. Backends may take more
        keywords with defaults."""


class ESM2Backend:
    """ESM-2 via fair-esm: published names, `.pt` paths, or seeded random weights."""

    name = "esm2"

    def __init__(
        self,
        model_url: str = FAIR_ESM_MODEL_URL,
        regression_url: str = FAIR_ESM_REGRESSION_URL,
    ):
        self.model_url = model_url
        self.regression_url = regression_url

    def matches(self, spec: str) -> bool:
        return spec in ESM2_ARCHITECTURES or spec.endswith(".pt") or Path(spec).is_file()

    def describe(self, spec: str, random_weights: bool = False, seed: int = 0) -> ModelInfo:
        if random_weights:
            if spec not in ESM2_ARCHITECTURES:
                raise ModelLoadError(
                    f"random weights need a model name, not {spec!r}; "
                    f"choose one of {', '.join(ESM2_ARCHITECTURES)}"
                )
            return describe_random_esm2(spec, seed)
        if spec in ESM2_ARCHITECTURES:
            return describe_esm2_named(spec, self.model_url, self.regression_url)
        return describe_esm2_file(Path(spec))

    def load(
        self,
        info: ModelInfo,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LoadedModel:
        model = build_random_esm2(info, device) if info.random_weights else load_esm2_file(info)
        rotary = {
            name: b.float().clone() for name, b in model.named_buffers() if "inv_freq" in name
        }
        model.to(device=device, dtype=dtype)
        # Rotary frequencies stay as stored, in float32: published weights carry them
        # rounded to fp16 and both reference forwards use those values.
        for name, frequencies in rotary.items():
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, frequencies.to(device))
        return LoadedModel(model, info)

    def packed_forward(
        self, loaded: LoadedModel, attention: str = "auto", compile: bool = False
    ) -> PackedESM2:
        return PackedESM2(loaded.model, attention=attention, compile=compile)


class ModelRegistry:
    def __init__(self, backends: Iterable[ModelBackend] = ()):
        self._backends: list[ModelBackend] = []
        for backend in backends:
            self.register(backend)

    def register(self, backend: ModelBackend) -> None:
        if not isinstance(backend, ModelBackend):
            raise TypeError(f"{backend!r} is not a model backend (see ModelBackend)")
        if any(existing.name == backend.name for existing in self._backends):
            raise ValueError(f"a model backend named {backend.name!r} is already registered")
        self._backends.append(backend)

    @property
    def backends(self) -> tuple[ModelBackend, ...]:
        return tuple(self._backends)

    def get(self, name: str) -> ModelBackend:
        """The backend registered as ``name`` (a run records its backend's name)."""
        for backend in self._backends:
            if backend.name == name:
                return backend
        names = ", ".join(b.name for b in self._backends) or "none"
        raise ModelLoadError(
            f"the run's model backend {name!r} is not installed (registered: {names}); "
            "install the plugin that provides it"
        )

    def resolve(self, spec: str) -> ModelBackend:
        for backend in reversed(self._backends):
            if backend.matches(spec):
                return backend
        names = ", ".join(b.name for b in self._backends) or "none"
        raise ModelLoadError(
            f"no model backend understands {spec!r} (registered: {names}); "
            "pass an ESM-2 name such as esm2_t33_650M_UR50D, a fair-esm .pt file, a Hugging "
            "Face hub id such as facebook/esm2_t33_650M_UR50D, or a folder with config.json"
        )


def default_registry() -> ModelRegistry:
    """A registry holding the built-in ESM-2 backend."""
    return ModelRegistry([ESM2Backend()])


def load_model(
    name_or_path: str,
    random_weights: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    registry: ModelRegistry | None = None,
) -> LoadedModel:
    """Load a model through the registry (the built-in one unless given)."""
    registry = registry or default_registry()
    backend = registry.resolve(name_or_path)
    info = backend.describe(name_or_path, random_weights=random_weights, seed=seed)
    return backend.load(info, device=device, dtype=dtype)
