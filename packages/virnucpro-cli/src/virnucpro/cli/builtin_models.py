"""Built-in plugin: the ESM-2 (fair-esm) model backend, registered like any plugin's."""

from __future__ import annotations

from typing import Any

from virnucpro.cli.hookspecs import hookimpl
from virnucpro.cli.jobs import PIPELINE


@hookimpl
def virnucpro_register_models(registry: Any) -> None:
    registry.register(PIPELINE.esm2_backend())
