"""Fixtures for the checkpoint tests: the synthetic run (one source of truth for the
expected embeddings) and helpers to build run directories and spawn real processes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.ckpt import AsyncCheckpointWriter, write_manifest
from virnucpro.ckpt.batch import is_per_token, is_spans, offsets_from_lengths
from virnucpro.ckpt.parts import PARTS_ATTR
from virnucpro.ckpt.verify import CHECKSUMS_ATTR

SCRIPT = Path(__file__).with_name("synthetic_run.py")
WIDTH = 16


def _load_synthetic():
    spec = importlib.util.spec_from_file_location("ckpt_synthetic_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merged_in_input_order(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """A merged file's datasets in input order, and its attributes, as two runs with the
    same result agree on them: per-token values are gathered row by row through their
    spans and given as values plus offsets (as a checkpoint holds them); the spans, the
    record of the parts and the spans' digests are left out, since where rows lie among
    the parts depends on how the run was checkpointed."""
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit_links(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        data = {}
        for name in names:
            if is_spans(name):
                continue
            if not is_per_token(name):
                data[name] = f[name][()]
                continue
            spans, values = f[name + "_spans"][()], f[name][()]
            rows = [values[start:stop] for start, stop in spans.tolist()]
            data[name] = np.concatenate(rows) if rows else values[:0]
            data[name + "_offsets"] = offsets_from_lengths(spans[:, 1] - spans[:, 0])
        attrs = {k: v for k, v in f.attrs.items() if k not in (PARTS_ATTR, CHECKSUMS_ATTR)}
        digests = json.loads(f.attrs[CHECKSUMS_ATTR]) if CHECKSUMS_ATTR in f.attrs else {}
        attrs[CHECKSUMS_ATTR] = {k: v for k, v in digests.items() if not is_spans(k)}
    return data, attrs


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
    """A run directory with a manifest for ``num`` synthetic sequences (and ``changes``)."""

    def make(num: int = 50, name: str = "run", **changes: object) -> tuple[Path, dict]:
        run_dir = tmp_path / name
        manifest = {**synthetic.manifest_for(num, WIDTH), **changes}
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
