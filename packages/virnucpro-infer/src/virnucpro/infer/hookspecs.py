"""The hooks through which model backends and output writers, built-in or third-party,
plug into the engine.

A plugin marks its functions with ``pluggy.HookimplMarker("virnucpro")`` (or
:data:`hookimpl` from here) and publishes its module under the ``virnucpro``
entry-point group. The engine never calls these hooks directly; it goes through
:class:`virnucpro.infer.plugins.PluginHost`. Front ends (the cli) add hooks of their
own to the same group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from virnucpro.infer.registry import ModelRegistry
    from virnucpro.infer.writers import WriterRegistry

PROJECT_NAME = "virnucpro"
ENTRY_POINT_GROUP = "virnucpro"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class EngineSpec:
    """Hook specifications of the engine; a plugin implements any subset of them."""

    @hookspec
    def virnucpro_register_models(self, registry: ModelRegistry) -> None:
        """Add model backends with ``registry.register(backend)`` (see ``ModelBackend``)."""

    @hookspec
    def virnucpro_register_writers(self, registry: WriterRegistry) -> None:
        """Add output writers with ``registry.register(writer)`` (see ``OutputWriter``)."""
