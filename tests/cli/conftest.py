"""Fixtures: real distributions on disk (``*.dist-info``) so plugins load through
importlib.metadata exactly as installed ones do, and a runner for real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from virnucpro.cli.plugins import ALLOW_VAR, BLOCK_VAR

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "packages" / f"virnucpro-{name}" / "src" for name in ("data", "ckpt", "infer", "cli")
]


def write_distribution(
    root: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, Mapping[str, str]],
    modules: Mapping[str, str] | None = None,
) -> Path:
    """A minimal installed distribution: METADATA, entry_points.txt and its modules."""
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    sections = []
    for group, entries in entry_points.items():
        lines = "".join(f"{key} = {value}\n" for key, value in entries.items())
        sections.append(f"[{group}]\n{lines}")
    (dist_info / "entry_points.txt").write_text("\n".join(sections))
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


BUILTIN_PACKAGES = ("cli", "infer")
"""The virnucpro packages whose built-in plugins are entry points: commands (cli),
the ESM-2 backend and the HDF5 writer (infer)."""


def _is_installed(name: str) -> bool:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return any(ep.group == "virnucpro" for ep in dist.entry_points)


@pytest.fixture(scope="session")
def cli_dist(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where the built-in plugins' metadata lies; from a source tree, written from each
    package's pyproject.toml so the built-ins load through their real entry points."""
    roots = []
    for package in BUILTIN_PACKAGES:
        pyproject = ROOT / "packages" / f"virnucpro-{package}" / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
        if _is_installed(project["name"]):
            continue
        root = tmp_path_factory.mktemp(f"{package}-dist")
        scripts = {"console_scripts": project["scripts"]} if "scripts" in project else {}
        write_distribution(
            root, project["name"], project["version"], {**scripts, **project["entry-points"]}
        )
        roots.append(root)
    return roots


@pytest.fixture
def plugin_path(cli_dist: list[Path], monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Puts distributions on sys.path for in-process tests, with no plugin variables set."""
    monkeypatch.delenv(BLOCK_VAR, raising=False)
    monkeypatch.delenv(ALLOW_VAR, raising=False)
    for path in cli_dist:
        monkeypatch.syspath_prepend(str(path))

    def add(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))

    return add


@pytest.fixture
def run_cli(cli_dist: list[Path]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``python -m virnucpro.cli ARGS`` in a real subprocess."""

    def run(
        args: Sequence[str],
        paths: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "virnucpro.cli", *args],
            env=subprocess_env(cli_dist, paths, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def subprocess_env(
    cli_dist: Sequence[Path], paths: Sequence[Path] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (BLOCK_VAR, ALLOW_VAR)}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*paths, *cli_dist, *SOURCES])
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


@pytest.fixture
def child_env(cli_dist: list[Path]) -> Callable[..., dict[str, str]]:
    """The environment of a subprocess that imports virnucpro from this tree."""

    def make(paths: Sequence[Path] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return subprocess_env(cli_dist, paths, extra)

    return make


DEMO_PLUGIN = '''
"""A third-party plugin, as someone outside the project would write it."""
import dataclasses
import time
from pathlib import Path

import pluggy
import typer

from virnucpro.cli.signals import GracefulStop
from virnucpro.infer.job.errors import (
    BadInputError, InputsChangedError, NoDeviceError, RunDirInUseError, RunDirMismatchError,
    WeightsUnavailableError,
)

hookimpl = pluggy.HookimplMarker("virnucpro")


class DemoBackend:
    """Models named ``demo:<fair-esm name>``: ESM-2 under another backend's name."""

    name = "demo-model"
    prefix = "demo:"

    def _esm2(self):
        from virnucpro.infer.registry import ESM2Backend

        return ESM2Backend()

    def matches(self, spec):
        return spec.startswith(self.prefix)

    def describe(self, spec, random_weights=False, seed=0):
        info = self._esm2().describe(spec[len(self.prefix):], random_weights, seed)
        return dataclasses.replace(info, backend=self.name)

    def load(self, info, device="cpu", dtype=None):
        import torch

        esm2_info = dataclasses.replace(info, backend="esm2")
        return self._esm2().load(esm2_info, device=device, dtype=dtype or torch.float32)

    def packed_forward(self, loaded, **options):
        return self._esm2().packed_forward(loaded, **options)


class CsvWriter:
    """One line per sequence: its id, then its mean embedding."""

    name = "csv"

    def output_path(self, run_dir):
        return Path(run_dir) / "embeddings.csv"

    def write(self, run_dir, rows):
        from virnucpro.ckpt import merge_checkpoints, open_embeddings

        lines = []
        with open_embeddings(merge_checkpoints(run_dir)) as result:
            for name in result.ids:
                lines.append(",".join([name, *(f"{v:.9g}" for v in result[name])]) + "\\n")
        path = self.output_path(run_dir)
        path.write_text("".join(lines))
        return path

    def check(self, run_dir):
        return None if self.output_path(run_dir).is_file() else "no embeddings.csv"


@hookimpl
def virnucpro_register_models(registry):
    registry.register(DemoBackend())


@hookimpl
def virnucpro_register_writers(registry):
    registry.register(CsvWriter())


@hookimpl
def virnucpro_register_commands(app):
    @app.command("demo-hello")
    def demo_hello():
        """Say hello from the demo plugin."""
        typer.echo("hello from demo")

    @app.command("demo-loop")
    def demo_loop(slow: bool = False):
        """A batch loop that stops the way the pipeline does."""
        with GracefulStop() as stop:
            batch = 0
            while not stop.requested:
                batch += 1
                print(f"batch {batch}", flush=True)
                time.sleep(60 if slow else 0.02)
            print(f"checkpointed {batch} batches", flush=True)
            raise stop.stopped_error(Path("runs/demo"))

    @app.command("demo-fail")
    def demo_fail(kind: str):
        """Raise one of the errors a person can meet."""
        import errno
        errors = {
            "bad": BadInputError("reads.fa: record 3 is empty: remove it"),
            "weights": WeightsUnavailableError("no weights offline: use --random-weights"),
            "nogpu": NoDeviceError("--device cuda but no GPU is visible"),
            "inuse": RunDirInUseError("runs/x is in use by process 12"),
            "mismatch": RunDirMismatchError("runs/x holds a run of another model"),
            "changed": InputsChangedError("reads.fa changed since the run started"),
            "enospc": OSError(errno.ENOSPC, "No space left on device", "runs/x/c.h5"),
            "missing": FileNotFoundError(errno.ENOENT, "No such file", "reads.fa"),
            "bug": ZeroDivisionError("division by zero"),
        }
        raise errors[kind]
'''


@pytest.fixture(scope="session")
def demo_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary distribution ``acme-embedders`` 3.1.4 with entry point ``demo``."""
    root = tmp_path_factory.mktemp("demo-plugin")
    return write_distribution(
        root,
        "acme-embedders",
        "3.1.4",
        {"virnucpro": {"demo": "virnucpro_demo_plugin"}},
        {"virnucpro_demo_plugin": DEMO_PLUGIN},
    )


@pytest.fixture
def dist_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write another temporary distribution (for broken plugins)."""

    def make(name: str, module: str, source: str, entry_point: str | None = None) -> Path:
        root = tmp_path / name
        return write_distribution(
            root, name, "0.0.1", {"virnucpro": {entry_point or name: module}}, {module: source}
        )

    return make
