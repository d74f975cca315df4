"""The cli's own hook: commands. Model backends and output writers are the engine's
hooks (``virnucpro.infer.hookspecs``); all of them share the ``virnucpro`` project name
and entry-point group, so a plugin may implement any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from virnucpro.infer.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl, hookspec

if TYPE_CHECKING:
    import typer

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "CliSpec", "hookimpl"]


class CliSpec:
    """Hook specifications of the command line."""

    @hookspec
    def virnucpro_register_commands(self, app: typer.Typer) -> None:
        """Add commands to the ``virnucpro`` Typer app (``@app.command(...)``)."""
