"""Built-in plugin: the ESM-2 backends (fair-esm names and `.pt` files; Hugging Face hub
ids and folders), registered like any plugin's.

The backend is imported when the hook runs, not when the plugin loads: loading plugins
(``virnucpro --help``) must not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virnucpro.infer.hookspecs import hookimpl

if TYPE_CHECKING:
    from virnucpro.infer.registry import ModelRegistry


@hookimpl
def virnucpro_register_models(registry: ModelRegistry) -> None:
    from virnucpro.infer.hf_esm2 import HFESM2Backend
    from virnucpro.infer.registry import ESM2Backend

    registry.register(HFESM2Backend())
    registry.register(ESM2Backend())
