"""The hooks through which every part of virnucpro, built-in or third-party, plugs in.

The project name is "virnucpro": a plugin marks its functions with
``pluggy.HookimplMarker("virnucpro")`` (or :data:`hookimpl` from here) and publishes its
module under the ``virnucpro`` entry-point group. The core never calls these hooks
directly; it goes through :class:`virnucpro.cli.plugins.PluginHost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from virnucpro.cli.writers import WriterRegistry

PROJECT_NAME = "virnucpro"
ENTRY_POINT_GROUP = "virnucpro"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class VirnucproSpec:
    """Hook specifications; a plugin implements any subset of them."""

    @hookspec
    def virnucpro_register_commands(self, app: typer.Typer) -> None:
        """Add commands to the ``virnucpro`` Typer app (``@app.command(...)``)."""

    @hookspec
    def virnucpro_register_models(self, registry: Any) -> None:
        """Add model backends with ``registry.register(backend)``.

        ``registry`` is virnucpro.infer's ``ModelRegistry``; the cli only passes it on.
        """

    @hookspec
    def virnucpro_register_writers(self, registry: WriterRegistry) -> None:
        """Add output writers with ``registry.register(writer)`` (see ``writers``)."""
