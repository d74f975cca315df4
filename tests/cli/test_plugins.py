"""Plugins load from real distributions through the ``virnucpro`` entry-point group."""

from __future__ import annotations

import json
from contextlib import redirect_stderr, redirect_stdout
from importlib import metadata
from io import StringIO

import esm
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from virnucpro.cli.app import AppState, build_app
from virnucpro.cli.errors import ExitCode
from virnucpro.cli.main import main
from virnucpro.cli.plugins import ALLOW_VAR, BLOCK_VAR, CliPlugins, load_cli_plugins
from virnucpro.infer import load_model
from virnucpro.infer.job.errors import PluginError
from virnucpro.infer.plugins import PluginSelection


def help_text(plugins: CliPlugins) -> str:
    result = CliRunner().invoke(build_app(plugins), ["--help"], obj=AppState(plugins))
    assert result.exit_code == 0, result.output
    return result.output


def backend_names(plugins: CliPlugins) -> list[str]:
    return sorted(backend.name for backend in plugins.host.model_registry().backends)


def test_builtins_register_through_entry_points(plugin_path):
    plugins = load_cli_plugins({})
    builtins = {info.name: info.distribution for info in plugins.plugins if info.builtin}
    assert builtins == {
        "commands": "virnucpro-cli",
        "esm2": "virnucpro-infer",
        "hdf5": "virnucpro-infer",
    }
    assert all(info.loaded for info in plugins.plugins if info.builtin)
    text = help_text(plugins)
    for command in ("run", "resume", "inspect-checkpoint", "plugins"):
        assert f" {command} " in text
    assert plugins.host.writers().names() == ["hdf5"]
    assert backend_names(plugins) == ["esm2", "hf-esm2"]


def test_third_party_plugin_adds_command_model_and_writer(plugin_path, demo_plugin):
    plugin_path(demo_plugin)
    plugins = load_cli_plugins({})
    demo = next(info for info in plugins.plugins if info.name == "demo")
    assert (demo.distribution, demo.version, demo.builtin, demo.loaded) == (
        "acme-embedders",
        "3.1.4",
        False,
        True,
    )
    assert " demo-hello " in help_text(plugins)
    assert backend_names(plugins) == ["demo-model", "esm2", "hf-esm2"]
    registry = plugins.host.model_registry()
    assert registry.resolve("demo:esm2_t6_8M_UR50D").name == "demo-model"
    assert registry.resolve("esm2_t6_8M_UR50D").name == "esm2"
    assert plugins.host.writers().names() == ["csv", "hdf5"]


def test_blocking_a_builtin_removes_it(plugin_path):
    plugins = load_cli_plugins({BLOCK_VAR: "esm2"})
    assert backend_names(plugins) == []
    assert plugins.host.writers().names() == ["hdf5"]
    assert not next(info for info in plugins.plugins if info.name == "esm2").loaded


@pytest.mark.parametrize(
    "environ",
    [
        {BLOCK_VAR: "demo"},
        {BLOCK_VAR: "esm2, Acme_Embedders"},
        {ALLOW_VAR: ""},
        {ALLOW_VAR: "someone-else"},
    ],
)
def test_blocked_or_not_allowed_plugin_stays_out(plugin_path, demo_plugin, environ):
    plugin_path(demo_plugin)
    plugins = load_cli_plugins(environ)
    assert not next(info for info in plugins.plugins if info.name == "demo").loaded
    text = help_text(plugins)
    assert "demo-hello" not in text
    assert " run " in text
    assert "demo-model" not in backend_names(plugins)
    assert plugins.host.writers().names() == ["hdf5"]


def test_allow_list_admits_named_plugin(plugin_path, demo_plugin):
    plugin_path(demo_plugin)
    plugins = load_cli_plugins({ALLOW_VAR: "demo"})
    assert next(i for i in plugins.plugins if i.name == "demo").loaded
    assert " demo-hello " in help_text(plugins)


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
        load_cli_plugins({})
    assert caught.value.message == (
        "plugin 'typo' (from typo-plugin) implements unknown hook(s) "
        "virnucpro_register_comands: update or remove it, or block it with "
        "VIRNUCPRO_PLUGINS_BLOCK=typo"
    )
    load_cli_plugins({BLOCK_VAR: "typo"})


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
        load_cli_plugins({})
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
    cli, infer = metadata.version("virnucpro-cli"), metadata.version("virnucpro-infer")
    assert rows["commands"] == ["commands", "virnucpro-cli", cli, "built-in", "loaded"]
    assert rows["esm2"] == ["esm2", "virnucpro-infer", infer, "built-in", "loaded"]


def test_version_lists_cli_and_plugins(run_cli, demo_plugin):
    result = run_cli(["--version"], [demo_plugin])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "acme-embedders 3.1.4" in lines
    assert f"virnucpro-cli {metadata.version('virnucpro-cli')}" in lines
    assert all(
        line.split()[0] in {"acme-embedders"} or line.startswith("virnucpro-") for line in lines
    )


def test_plugin_model_and_writer_run_through_the_engine(plugin_path, demo_plugin, tmp_path):
    """``--model demo:...`` resolves to the plugin's backend, ``--format csv`` to its
    writer; the numbers equal fair-esm's forward on the same seeded weights."""
    plugin_path(demo_plugin)
    proteins = {"first": "MKVLAAGIVW", "second": "MSTQWHEKLRPA"}
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in proteins.items()))
    run_dir = tmp_path / "run"
    args = [
        "run", str(fasta), "-o", str(run_dir), "--model", "demo:esm2_t6_8M_UR50D",
        "--random-weights", "--seed", "5", "--format", "csv", "--device", "cpu", "--workers", "0",
    ]  # fmt: skip
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines()[-1] == f"output: {run_dir / 'embeddings.csv'}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["model_backend"], manifest["output_format"]) == ("demo-model", "csv")
    rows = [line.split(",") for line in (run_dir / "embeddings.csv").read_text().splitlines()]
    assert [row[0] for row in rows] == list(proteins)

    model = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=5).model
    convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    for row, residues in zip(rows, proteins.values(), strict=True):
        _, _, tokens = convert([("s", residues)])
        with torch.no_grad():
            hidden = model(tokens, repr_layers=[6])["representations"][6][0]
        expected = hidden[1 : len(residues) + 1].mean(0).numpy()
        np.testing.assert_allclose(np.array(row[1:], dtype=np.float32), expected, atol=1e-5)
