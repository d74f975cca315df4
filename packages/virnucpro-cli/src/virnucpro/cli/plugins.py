"""The cli's plugin facade: the engine's hooks plus the command hook, every hook checked.

Loading, selection (``VIRNUCPRO_PLUGINS_BLOCK``/``VIRNUCPRO_PLUGINS_ALLOW``) and the
engine's hooks are :mod:`virnucpro.infer.plugins`; the cli adds its command hook and
refuses plugins that implement a hook nobody specified.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import typer

from virnucpro.cli.hookspecs import CliSpec
from virnucpro.infer.plugins import ALLOW_VAR, BLOCK_VAR, PluginHost, load_plugins

__all__ = ["ALLOW_VAR", "BLOCK_VAR", "CliPlugins", "load_cli_plugins"]


class CliPlugins:
    """What the cli calls: its commands, and the engine's host for runs."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    @property
    def plugins(self) -> tuple:
        return self.host.plugins

    def register_commands(self, app: typer.Typer) -> None:
        self.host.manager.hook.virnucpro_register_commands(app=app)


def load_cli_plugins(environ: Mapping[str, str] | None = None) -> CliPlugins:
    env = os.environ if environ is None else environ
    return CliPlugins(load_plugins(env, extra_specs=(CliSpec,), strict=True))
