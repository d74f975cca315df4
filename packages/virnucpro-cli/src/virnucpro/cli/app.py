"""The Typer app: global options here, every command from a plugin's hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console

from virnucpro.cli.plugins import CliPlugins
from virnucpro.cli.versions import version_lines

DEBUG_ENV = "VIRNUCPRO_DEBUG"


@dataclass
class AppState:
    """Given to every command as ``ctx.obj``."""

    plugins: CliPlugins
    console: Console = field(default_factory=Console)
    """Results (summaries, tables, JSON) go to stdout."""
    err_console: Console = field(default_factory=lambda: Console(stderr=True))
    """Progress and messages go to stderr."""


def app_state(ctx: typer.Context) -> AppState:
    state = ctx.find_object(AppState)
    if state is None:
        raise RuntimeError("the virnucpro app was invoked without its AppState (ctx.obj)")
    return state


def _print_versions(value: bool) -> None:
    if value:
        for line in version_lines():
            typer.echo(line)
        raise typer.Exit()


class PlainHelpCommand(typer.core.TyperCommand):
    """Arguments in help as people write them (``FASTA...``, no ``{FASTA}`` and no
    ``<list[Path]>``): typer's type names mean nothing to the person reading."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, typer.core.TyperArgument):
                name = param.metavar or (param.name or "").upper()
                plain = name + ("..." if param.nargs != 1 else "")
                param.display_type_rich = _no_type  # type: ignore[method-assign]
                param._usage_display_name = lambda plain=plain: plain  # type: ignore[method-assign,misc]
        return params


def _no_type(ctx: Any) -> None:
    return None


def build_app(plugins: CliPlugins) -> typer.Typer:
    """A new app with the commands every loaded plugin registers."""
    app = typer.Typer(
        name="virnucpro",
        help="ESM-2 protein embeddings for millions of sequences; kill it, resume it.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain help: rich's panels cut defaults and print type names at 80 columns.
        rich_markup_mode=None,
    )

    @app.callback()
    def _global_options(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=_print_versions,
                is_eager=True,
                help="List each installed virnucpro package and plugin with its version.",
            ),
        ] = False,
        debug: Annotated[
            bool,
            typer.Option(
                "--debug",
                help=f"Show the traceback of an error (or set {DEBUG_ENV}=1).",
            ),
        ] = False,
    ) -> None:
        """ESM-2 protein embeddings for millions of sequences; kill it, resume it."""

    plugins.register_commands(app)
    return app
