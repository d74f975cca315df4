"""Each bad input or configuration: one line on stderr, its exit code, no traceback."""

from __future__ import annotations

import errno

import pytest
import torch

from virnucpro.ckpt import CheckpointWriteError, RunLock
from virnucpro.cli.errors import ExitCode, translate
from virnucpro.cli.failures import translate_pipeline_error


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def fasta(tmp_path):
    def write(text: str, name: str = "in.fasta"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.mark.parametrize(
    ("text", "code", "phrase"),
    [
        (None, ExitCode.MISSING_INPUT, "input not found"),
        ("MKV\n", ExitCode.BAD_INPUT, "not FASTA"),
        (">a\nMKV\n>a\nMKL\n", ExitCode.BAD_INPUT, "duplicate ids"),
        (">a\nMKV\n>b\n\n", ExitCode.BAD_INPUT, "empty sequence"),
    ],
)
def test_bad_input(virnucpro, fasta, tmp_path, fast_args, text, code, phrase):
    path = tmp_path / "missing.fasta" if text is None else fasta(text)
    result = virnucpro(["run", path, "-o", tmp_path / "run", *fast_args])
    assert result.returncode == code
    assert phrase in one_line(result)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_weights_not_available_offline(virnucpro, fasta, tmp_path):
    closed = "http://127.0.0.1:9"
    result = virnucpro(
        ["run", fasta(">a\nMKV\n"), "-o", tmp_path / "run", "--model", "esm2_t6_8M_UR50D"],
        env={"http_proxy": closed, "https_proxy": closed, "HTTPS_PROXY": closed},
    )
    assert result.returncode == ExitCode.WEIGHTS_UNAVAILABLE
    line = one_line(result)
    assert "Connection refused" in line and "put esm2_t6_8M_UR50D.pt there" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("option", [["--device", "cuda"], ["--gpus", "0"]])
def test_no_gpu(virnucpro, fasta, tmp_path, fast_args, option):
    result = virnucpro(["run", fasta(">a\nMKV\n"), "-o", tmp_path / "run", *fast_args, *option])
    assert result.returncode == ExitCode.NO_GPU
    assert "no usable GPU" in one_line(result)


def test_run_dir_in_use(virnucpro, fasta, tmp_path, fast_args):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        result = virnucpro(["run", fasta(">a\nMKV\n"), "-o", run_dir, *fast_args])
        resumed = virnucpro(["resume", run_dir])
    assert result.returncode == resumed.returncode == ExitCode.RUN_DIR_IN_USE
    assert "in use by another virnucpro process" in one_line(result)


def test_layer_the_model_lacks(virnucpro, fasta, tmp_path, fast_args):
    result = virnucpro(
        ["run", fasta(">a\nMKV\n"), "-o", tmp_path / "r", *fast_args, "--layers", "9"]
    )
    assert result.returncode == ExitCode.USAGE
    assert "layer 9 does not exist" in one_line(result)


def test_used_run_dir_force_and_changed_inputs(virnucpro, fasta, tmp_path, fast_args, read_output):
    """A finished run: `run` again is refused, resume of changed inputs is refused saying
    which file changed, and --force starts over with the old run moved aside."""
    path = fasta(">a\nMKVLA\n>b\nMSTQ\n")
    run_dir = tmp_path / "run"
    assert virnucpro(["run", path, "-o", run_dir, *fast_args, "--workers", "0"]).returncode == 0

    again = virnucpro(["run", path, "-o", run_dir, *fast_args])
    assert again.returncode == ExitCode.RUN_DIR_MISMATCH
    assert f"virnucpro resume {run_dir}" in one_line(again) and "--force" in one_line(again)

    path.write_text(">a\nMKVLA\n>b\nMSTQ\n>c\nMW\n")
    changed = virnucpro(["resume", run_dir])
    assert changed.returncode == ExitCode.INPUTS_CHANGED
    assert "in.fasta (17 -> 23 bytes)" in one_line(changed)
    assert "2 -> 3 sequences" in one_line(changed)

    forced = virnucpro(["run", path, "-o", run_dir, *fast_args, "--workers", "0", "--force"])
    assert forced.returncode == 0, forced.stderr
    assert list(read_output(run_dir / "embeddings.h5")["ids"]) == ["a", "b", "c"]
    (replaced,) = run_dir.glob("replaced-*")
    assert {p.name for p in replaced.iterdir()} == {"manifest.json", "checkpoints", "embeddings.h5"}
    assert list(read_output(replaced / "embeddings.h5")["ids"]) == ["a", "b"]


def test_resume_of_a_directory_without_a_run(virnucpro, tmp_path):
    result = virnucpro(["resume", tmp_path])
    assert result.returncode == ExitCode.MISSING_INPUT
    assert "is not a virnucpro run" in one_line(result)


def test_disk_full_maps_to_its_exit_code():
    """ENOSPC from the manifest or merge (OSError) and from the background writer."""
    direct = translate(OSError(errno.ENOSPC, "No space left on device", "run/embeddings.h5"))
    assert direct is not None and direct.exit_code == ExitCode.DISK_FULL
    writer = CheckpointWriteError(
        "1 checkpoint write(s) failed: s_00000.h5: OSError: [Errno 28] No space left on device"
    )
    mapped = translate_pipeline_error(writer)
    assert mapped is not None and mapped.exit_code == ExitCode.DISK_FULL
    assert mapped.message.startswith("disk full")
