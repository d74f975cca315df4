"""Plugins load from real distributions through the ``virnucpro`` entry-point group."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from virnucpro.cli.app import AppState, build_app
from virnucpro.cli.errors import ExitCode, PluginError
from virnucpro.cli.plugins import ALLOW_VAR, BLOCK_VAR, PluginSelection, load_plugins

# The built-in ESM-2 backend needs virnucpro.infer; these tests look at other models.
NO_ESM2 = {BLOCK_VAR: "esm2"}


class CollectingRegistry:
    """Stands in for virnucpro.infer's ModelRegistry: the hooks only call register()."""

    def __init__(self) -> None:
        self.backends: list[object] = []

    def register(self, backend: object) -> None:
        self.backends.append(backend)

    def names(self) -> list[str]:
        return [backend.name for backend in self.backends]


def help_text(environ: dict[str, str]) -> str:
    plugins = load_plugins(environ)
    result = CliRunner().invoke(build_app(plugins), ["--help"], obj=AppState(plugins))
    assert result.exit_code == 0, result.output
    return result.output


def test_builtins_register_through_entry_points(plugin_path):
    host = load_plugins({})
    builtins = {info.name: info for info in host.plugins if info.builtin}
    assert set(builtins) == {"commands", "esm2", "hdf5"}
    assert all(info.loaded and info.distribution == "virnucpro-cli" for info in builtins.values())
    text = help_text({})
    for command in ("run", "resume", "inspect-checkpoint", "plugins"):
        assert f" {command} " in text
    assert host.writers().names() == ["hdf5"]


def test_third_party_plugin_adds_command_model_and_writer(plugin_path, demo_plugin):
    plugin_path(demo_plugin)
    host = load_plugins(NO_ESM2)
    demo = next(info for info in host.plugins if info.name == "demo")
    assert (demo.distribution, demo.version, demo.builtin, demo.loaded) == (
        "acme-embedders",
        "3.1.4",
        False,
        True,
    )
    assert " demo-hello " in help_text(NO_ESM2)
    registry = CollectingRegistry()
    host.register_models(registry)
    assert registry.names() == ["demo-model"]
    assert host.writers().names() == ["csv", "hdf5"]


@pytest.mark.parametrize(
    "environ",
    [
        {BLOCK_VAR: "demo,esm2"},
        {BLOCK_VAR: "esm2, Acme_Embedders"},
        {ALLOW_VAR: "", BLOCK_VAR: "esm2"},
        {ALLOW_VAR: "someone-else", BLOCK_VAR: "esm2"},
    ],
)
def test_blocked_or_not_allowed_plugin_stays_out(plugin_path, demo_plugin, environ):
    plugin_path(demo_plugin)
    host = load_plugins(environ)
    assert not next(info for info in host.plugins if info.name == "demo").loaded
    text = help_text(environ)
    assert "demo-hello" not in text
    assert " run " in text
    registry = CollectingRegistry()
    host.register_models(registry)
    assert registry.names() == []


def test_allow_list_admits_named_plugin(plugin_path, demo_plugin):
    plugin_path(demo_plugin)
    environ = {ALLOW_VAR: "demo", BLOCK_VAR: "esm2"}
    assert next(i for i in load_plugins(environ).plugins if i.name == "demo").loaded
    assert " demo-hello " in help_text(environ)


def test_block_wins_over_allow():
    selection = PluginSelection.from_environ({ALLOW_VAR: "demo", BLOCK_VAR: "demo"})
    assert not selection.admits("demo", "acme-embedders", builtin=False)
    assert selection.admits("commands", "virnucpro-cli", builtin=True)
    assert not PluginSelection.from_environ({BLOCK_VAR: "virnucpro-cli"}).admits(
        "commands", "virnucpro-cli", builtin=True
    )


UNKNOWN_HOOK = """
import pluggy
hookimpl = pluggy.HookimplMarker("virnucpro")

@hookimpl
def virnucpro_register_comands(app):
    pass
"""


def test_unknown_hook_fails_at_start_up(plugin_path, dist_factory):
    plugin_path(dist_factory("typo-plugin", "typo_plugin_module", UNKNOWN_HOOK, "typo"))
    with pytest.raises(PluginError) as caught:
        load_plugins({})
    assert caught.value.message == (
        "plugin 'typo' (from typo-plugin) implements unknown hook(s) "
        "virnucpro_register_comands: update or remove it, or block it with "
        "VIRNUCPRO_PLUGINS_BLOCK=typo"
    )
    load_plugins({BLOCK_VAR: "typo"})


def test_unknown_hook_is_one_line_and_exit_code_in_subprocess(run_cli, dist_factory):
    path = dist_factory("typo-plugin", "typo_plugin_module", UNKNOWN_HOOK, "typo")
    result = run_cli(["--help"], [path])
    assert result.returncode == ExitCode.PLUGIN
    assert result.stderr.splitlines() == [
        "virnucpro: error: plugin 'typo' (from typo-plugin) implements unknown hook(s) "
        "virnucpro_register_comands: update or remove it, or block it with "
        "VIRNUCPRO_PLUGINS_BLOCK=typo"
    ]
    blocked = run_cli(["--help"], [path], {BLOCK_VAR: "typo"})
    assert blocked.returncode == 0, blocked.stderr


def test_plugin_that_fails_to_import_is_named(plugin_path, dist_factory):
    plugin_path(dist_factory("broken-plugin", "broken_plugin_module", "import no_such_mod\n"))
    with pytest.raises(PluginError) as caught:
        load_plugins({})
    assert caught.value.message == (
        "plugin 'broken-plugin' (from broken-plugin) failed to load: "
        "ModuleNotFoundError: No module named 'no_such_mod'"
    )


def test_subprocess_help_shows_plugin_command_unless_blocked(run_cli, demo_plugin):
    shown = run_cli(["--help"], [demo_plugin])
    assert shown.returncode == 0, shown.stderr
    assert " demo-hello " in shown.stdout
    hello = run_cli(["demo-hello"], [demo_plugin])
    assert (hello.returncode, hello.stdout) == (0, "hello from demo\n")
    hidden = run_cli(["--help"], [demo_plugin], {BLOCK_VAR: "demo"})
    assert hidden.returncode == 0, hidden.stderr
    assert "demo-hello" not in hidden.stdout
    assert " run " in hidden.stdout


def test_plugins_command_lists_status(run_cli, demo_plugin):
    result = run_cli(["plugins"], [demo_plugin], {BLOCK_VAR: "demo"})
    assert result.returncode == 0, result.stderr
    rows = {
        cells[0]: cells
        for line in result.stdout.splitlines()
        if (cells := [cell.strip() for cell in line.split("│")[1:-1]])
    }
    assert rows["demo"] == ["demo", "acme-embedders", "3.1.4", "third-party", "blocked"]
    assert rows["commands"] == ["commands", "virnucpro-cli", "0.1.0", "built-in", "loaded"]


def test_version_lists_cli_and_plugins(run_cli, demo_plugin):
    result = run_cli(["--version"], [demo_plugin])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "acme-embedders 3.1.4" in lines
    assert "virnucpro-cli 0.1.0" in lines
    assert all(
        line.split()[0] in {"acme-embedders"} or line.startswith("virnucpro-") for line in lines
    )
