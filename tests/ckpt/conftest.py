"""Fixtures for the checkpoint tests: the synthetic run (one source of truth for the
expected embeddings) and helpers to build run directories and spawn real processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.ckpt import AsyncCheckpointWriter, write_manifest

SCRIPT = Path(__file__).with_name("synthetic_run.py")
WIDTH = 16


def _load_synthetic():
    spec = importlib.util.spec_from_file_location("ckpt_synthetic_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic():
    """The synthetic run module: ``manifest_for``, ``synthetic_batch``."""
    return _load_synthetic()


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for spawned processes: this interpreter's import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


@pytest.fixture(scope="session")
def spawn_run(child_env):
    """Start the synthetic driver in its own process group; returns the Popen."""

    def spawn(run_dir: Path, *options: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), str(run_dir), *options],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    return spawn


@pytest.fixture
def make_run(tmp_path, synthetic):
    """A run directory with a manifest for ``num`` synthetic sequences."""

    def make(num: int = 50, name: str = "run") -> tuple[Path, dict]:
        run_dir = tmp_path / name
        manifest = synthetic.manifest_for(num, WIDTH)
        write_manifest(run_dir, manifest)
        return run_dir, manifest

    return make


@pytest.fixture
def write_rows(synthetic):
    """Write checkpoints holding the given index groups through the real writer."""

    def write(run_dir, manifest, groups, rank=0, world_size=1, session=None):
        with AsyncCheckpointWriter(run_dir, manifest, rank, world_size, session) as writer:
            paths = [
                writer.write_checkpoint_async(synthetic.synthetic_batch(g, WIDTH), "test")
                for g in groups
            ]
        return paths

    return write
