"""Faults said in one line with their exit code: a read-only output directory, and an
edited manifest (refused naming the field; nothing recomputed, nothing moved)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from virnucpro.cli.errors import ExitCode
from virnucpro.cli.main import main

TINY = ["--model", "esm2_t6_8M_UR50D", "--random-weights", "--device", "cpu", "--workers", "0"]


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_directory_is_one_line(proteins, read_only_dir, capsys):
    code = main(["run", str(proteins), "-o", str(read_only_dir / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_WRITABLE
    assert err.splitlines() == [
        f"virnucpro: error: cannot write {read_only_dir / 'run'}: Read-only file system; "
        "choose a writable output directory (-o)"
    ]


def test_an_edited_manifest_is_refused_naming_the_field(proteins, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(proteins),
                "-o",
                str(run_dir),
                *TINY,
                "--checkpoint-every",
                "5",
                "--keep-checkpoints",
            ]
        )
        == 0
    )
    (run_dir / "embeddings.h5").unlink()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["seed"] = 99
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in run_dir.rglob("*"))
    capsys.readouterr()
    code = main(["resume", str(run_dir), "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == ExitCode.RUN_DIR_MISMATCH
    assert len(err.strip().splitlines()) == 1 and "seed" in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert not Path(run_dir / "embeddings.h5").exists()
