"""Each bad input or configuration: one line on stderr, its exit code, no traceback."""

from __future__ import annotations

import errno

import pytest
import torch

from virnucpro.ckpt import CheckpointWriteError, RunLock
from virnucpro.ckpt import DiskFullError as CheckpointDiskFullError
from virnucpro.cli.errors import ExitCode, as_known, exit_code_of
from virnucpro.infer.job.errors import DiskFullError
from virnucpro.infer.job.translate import as_job_error


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
    assert not (tmp_path / "run").exists()


def test_weights_not_available_offline(virnucpro, fasta, tmp_path):
    closed = "http://127.0.0.1:9"
    result = virnucpro(
        ["run", fasta(">a\nMKV\n"), "-o", tmp_path / "run", "--model", "esm2_t6_8M_UR50D"],
        env={"http_proxy": closed, "https_proxy": closed, "HTTPS_PROXY": closed},
    )
    assert result.returncode == ExitCode.WEIGHTS_UNAVAILABLE
    line = one_line(result)
    assert "Connection refused" in line and "put esm2_t6_8M_UR50D.pt there" in line
    assert not (tmp_path / "run").exists()


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
    """A finished run: the same `run` again says it is complete, resume of changed inputs
    is refused saying which file changed, and --force starts over with the old run moved
    beside the run directory."""
    path = fasta(">a\nMKVLA\n>b\nMSTQ\n")
    run_dir = tmp_path / "run"
    args = ["run", path, "-o", run_dir, *fast_args, "--workers", "0"]
    assert virnucpro(args).returncode == 0

    again = virnucpro(args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"already complete: 2 sequences in {run_dir / 'embeddings.h5'}")

    path.write_text(">a\nMKVLA\n>b\nMSTQ\n>c\nMW\n")
    changed = virnucpro(["resume", run_dir])
    assert changed.returncode == ExitCode.INPUTS_CHANGED
    assert "in.fasta (17 -> 23 bytes)" in one_line(changed)
    assert "2 -> 3 sequences" in one_line(changed)

    forced = virnucpro([*args, "--force"])
    assert forced.returncode == 0, forced.stderr
    assert list(read_output(run_dir / "embeddings.h5")["ids"]) == ["a", "b", "c"]
    (replaced,) = tmp_path.glob("run.replaced-*")
    assert f"--force: the previous run in {run_dir} was moved to {replaced}" in forced.stderr
    assert {p.name for p in replaced.iterdir()} == {"manifest.json", "embeddings.h5"}
    assert list(read_output(replaced / "embeddings.h5")["ids"]) == ["a", "b"]
    assert not list(run_dir.glob("*replaced*"))


def test_resume_of_a_directory_without_a_run(virnucpro, tmp_path):
    result = virnucpro(["resume", tmp_path])
    assert result.returncode == ExitCode.MISSING_INPUT
    assert "is not a virnucpro run" in one_line(result)


def test_disk_full_maps_to_its_exit_code():
    """ENOSPC from the manifest or the merge (an OSError) is disk full, exit 10."""
    direct = as_known(OSError(errno.ENOSPC, "No space left on device", "run/embeddings.h5"))
    assert isinstance(direct, DiskFullError)
    assert exit_code_of(direct) == ExitCode.DISK_FULL


def test_disk_full_in_checkpoints_is_disk_full():
    """ckpt's own DiskFullError (a checkpoint write or the merge) and any error caused by
    ENOSPC become the engine's DiskFullError, exit 10, their line kept."""
    from_ckpt = CheckpointDiskFullError(
        "disk full: cannot write run/checkpoints/rank_0/s_00000.h5 (needs about 2.0 MiB, "
        "0 B free); free space there and run resume (finished checkpoints are kept)",
        "run/checkpoints/rank_0/s_00000.h5",
    )
    mapped = as_job_error(from_ckpt)
    assert isinstance(mapped, DiskFullError) and exit_code_of(mapped) == ExitCode.DISK_FULL
    assert mapped.message == " ".join(str(from_ckpt).split())
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "run/embeddings.h5")
        except OSError as cause:
            raise CheckpointWriteError("1 checkpoint write(s) failed") from cause
    except CheckpointWriteError as caused:
        mapped = as_job_error(caused)
    assert isinstance(mapped, DiskFullError) and mapped.message.startswith("disk full")
