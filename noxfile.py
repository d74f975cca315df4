"""Test sessions: one per package (installed alone, not editable), the data package
proven standalone, end-to-end, and lint. `nox` runs them all."""

import os

import nox

nox.options.sessions = ["lint", "data", "data_alone", "ckpt", "infer", "cli"]
nox.options.error_on_missing_interpreters = True

# The CPU build of torch lies on the CI machine's disk; a bare "torch" would pull a
# multi-GB CUDA build. Override on a GPU machine, e.g. VIRNUCPRO_TORCH="torch".
TORCH = os.environ.get("VIRNUCPRO_TORCH", "torch==2.13.0")
TEST_TOOLS = ["pytest>=8", "hypothesis>=6.100"]
DATA = "packages/virnucpro-data"
CKPT = "packages/virnucpro-ckpt"
INFER = "packages/virnucpro-infer"
CLI = "packages/virnucpro-cli"


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("pytest", *paths, *session.posargs)


# The four packages' sources, typed against the installed dependencies (settings in
# pyproject.toml's [tool.mypy]).
MYPY_ARGS = [f"{package}/src" for package in (DATA, CKPT, INFER, CLI)]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.install(TORCH)
    session.install(DATA, CKPT, INFER, CLI, "mypy>=1.11")
    session.run("mypy", *MYPY_ARGS)


@nox.session
def data(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(DATA, "fair-esm", *TEST_TOOLS)
    _pytest(session, "tests/data")


@nox.session
def data_alone(session: nox.Session) -> None:
    """The data package with none of the others' dependencies installed."""
    session.install(TORCH)
    session.install(DATA, *TEST_TOOLS)
    _pytest(session, "tests/standalone")


@nox.session
def ckpt(session: nox.Session) -> None:
    session.install(CKPT, *TEST_TOOLS)
    _pytest(session, "tests/ckpt")


@nox.session
def infer(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(DATA, CKPT, INFER, *TEST_TOOLS, "transformers>=5.0")
    _pytest(session, "tests/infer")


@nox.session
def cli(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(DATA, CKPT, INFER, CLI, *TEST_TOOLS, "transformers>=5.0")
    _pytest(session, "tests/cli", "tests/e2e")
