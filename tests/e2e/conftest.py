"""End-to-end fixtures: the real ``virnucpro`` command in subprocesses, small FASTA inputs,
and fair-esm's own forward on the same seeded random weights as the reference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "packages" / f"virnucpro-{name}" / "src" for name in ("data", "ckpt", "infer", "cli")
]
MODEL = "esm2_t6_8M_UR50D"
SEED = 3
AMINO = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
# Small and fast on 2 cores: short sequences, small batches, frequent checkpoints, so
# a kill lands between checkpoints and resume has real work to continue.
FAST = ["--model", MODEL, "--random-weights", "--seed", str(SEED), "--token-budget", "300"]


def _builtin_dists(root: Path) -> list[Path]:
    """The built-in plugins' entry points (cli: commands; infer: ESM-2 and HDF5) from
    each package's pyproject.toml, for any package that is not installed."""
    written = []
    for package in ("cli", "infer"):
        project = tomllib.loads(
            (ROOT / "packages" / f"virnucpro-{package}" / "pyproject.toml").read_text()
        )["project"]
        try:
            dist = metadata.distribution(project["name"])
            if any(ep.group == "virnucpro" for ep in dist.entry_points):
                continue
        except metadata.PackageNotFoundError:
            pass
        folder = root / package
        dist_info = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
        )
        entries = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["virnucpro"].items())
        (dist_info / "entry_points.txt").write_text(f"[virnucpro]\n{entries}")
        written.append(folder)
    return written


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a ``virnucpro`` subprocess importing this source tree."""
    paths = [*_builtin_dists(tmp_path_factory.mktemp("builtin-dists")), *SOURCES]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIRNUCPRO_") and k != "CUDA_VISIBLE_DEVICES"
    }
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["COLUMNS"] = "200"
    env["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    # A process that dies of a fatal signal (a C++ abort in a torchrun rank, seen once)
    # prints every thread's Python stack, so a rare failure says where it happened.
    env["PYTHONFAULTHANDLER"] = "1"
    return env


class Virnucpro:
    """Runs ``python -m virnucpro.cli`` for real: to the end, or started for killing."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "virnucpro.cli", *map(str, args)]

    def __call__(
        self, args: Sequence[str], timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args),
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, args: Sequence[str], new_session: bool = False) -> Running:
        return Running(
            subprocess.Popen(
                self.command(args),
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=new_session,
            )
        )


class Running:
    """A started command whose stderr is read line by line in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, prefix: str, timeout: float = 120) -> bool:
        """True once a stderr line starts with ``prefix``; False if the process ended first."""
        with self._new_line:
            found = self._new_line.wait_for(
                lambda: (
                    any(line.startswith(prefix) for line in self.lines)
                    or not self._reader.is_alive()
                ),
                timeout,
            )
            return bool(found) and any(line.startswith(prefix) for line in self.lines)

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.process.returncode, stdout, "\n".join(self.lines)


@pytest.fixture(scope="session")
def virnucpro(cli_env: dict[str, str]) -> Virnucpro:
    return Virnucpro(cli_env)


def write_proteins(path: Path, count: int, seed: int, low: int = 20, high: int = 70) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for number in range(count):
        residues = AMINO[rng.integers(0, len(AMINO), int(rng.integers(low, high)))].tobytes()
        lines.append(f">protein_{number:03d} test\n{residues.decode()}\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="session")
def proteins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 proteins of 20-90 residues (a few above --max-length 80, so truncation shows)."""
    return write_proteins(tmp_path_factory.mktemp("inputs") / "proteins.fasta", 30, 7, 20, 90)


@pytest.fixture(scope="session")
def reference_model():
    """The run's model with fair-esm's own forward: same name, same seed, float32."""
    from virnucpro.infer import load_model

    return load_model(MODEL, random_weights=True, seed=SEED).model


def fair_esm_mean(model, residues: str, layer: int) -> np.ndarray:
    """fair-esm's ESM2.forward on one sequence; mean over residues (BOS/EOS excluded)."""
    import esm
    import torch

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, tokens = alphabet.get_batch_converter()([("s", residues)])
    with torch.no_grad():
        hidden = model(tokens, repr_layers=[layer])["representations"][layer][0]
    return hidden[1 : len(residues) + 1].mean(0).numpy()


def read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        data = {"ids": f["ids"].asstr()[()]}
        for name in ("embeddings", "lengths", "truncated"):
            data[name] = f[name][()]
    return data


@pytest.fixture(scope="session")
def read_output() -> Callable[[Path], dict[str, np.ndarray]]:
    return read_h5


@pytest.fixture(scope="session")
def fast_args() -> list[str]:
    return list(FAST)


@pytest.fixture(scope="session")
def reference(reference_model) -> Callable[[str, int], np.ndarray]:
    return lambda residues, layer=6: fair_esm_mean(reference_model, residues, layer)
