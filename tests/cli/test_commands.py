"""Options of run, resume and inspect-checkpoint reach the pipeline seam validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from virnucpro.cli.app import AppState, build_app
from virnucpro.cli.errors import ExitCode, RunDirInUseError
from virnucpro.cli.gpus import GpuSpec
from virnucpro.cli.jobs import JobContext, Jobs
from virnucpro.cli.main import main
from virnucpro.cli.options import (
    Device,
    InputType,
    Placement,
    Pooling,
    Precision,
    ResumeOptions,
    RunOptions,
)
from virnucpro.cli.plugins import load_plugins
from virnucpro.cli.report import CheckpointInfo, RunReport, RunState
from virnucpro.cli.summary import RunSummary


class RecordingJobs(Jobs):
    """Stands in for the pipeline (not wired yet): records what the commands pass."""

    def __init__(self, summary: RunSummary | None = None, report: RunReport | None = None):
        self.calls: list[tuple[str, object]] = []
        self.contexts: list[JobContext] = []
        self.summary = summary
        self.report = report

    def run(self, options, context):
        self.calls.append(("run", options))
        self.contexts.append(context)
        return self.summary

    def resume(self, options, context):
        self.calls.append(("resume", options))
        return self.summary

    def inspect(self, run_dir, verify):
        self.calls.append(("inspect", (run_dir, verify)))
        return self.report


SUMMARY = RunSummary(
    sequences=1000, new_sequences=600, tokens=123_456, seconds=12.0, output=Path("o/e.h5")
)


@pytest.fixture
def invoke(plugin_path):
    def call(args, jobs):
        plugins = load_plugins({})
        state = AppState(plugins, jobs, console=Console(width=200))
        return CliRunner().invoke(build_app(plugins), args, obj=state)

    return call


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    path = tmp_path / "reads.fa"
    path.write_text(">a\nMKV\n")
    return path


def test_run_defaults(invoke, fasta, tmp_path):
    jobs = RecordingJobs(SUMMARY)
    result = invoke(["run", str(fasta), "-o", str(tmp_path / "r")], jobs)
    assert result.exit_code == 0, result.output
    assert jobs.calls == [("run", RunOptions(inputs=(fasta,), run_dir=tmp_path / "r"))]
    assert result.output.splitlines() == [
        "done: 1,000 sequences (600 now, 400 before resuming)",
        "tokens: 123,456 in 0:00:12 (10,288 tokens/s)",
        "output: o/e.h5",
    ]


def test_run_every_option(invoke, fasta, tmp_path):
    jobs = RecordingJobs(SUMMARY)
    args = [
        "run", str(fasta), str(fasta), "-o", str(tmp_path / "r"),
        "--model", "esm2_t6_8M_UR50D", "--random-weights", "--seed", "7",
        "--input-type", "dna", "--chunk-size", "500", "--layers", "-1,3",
        "--pooling", "bos", "--pooling", "per-token", "--pooling", "bos",
        "--precision", "bf16", "--device", "cuda", "--gpus", "2,3",
        "--token-budget", "16_384", "--max-length", "0", "--workers", "0",
        "--checkpoint-every", "50", "--checkpoint-interval", "2.5", "--force",
    ]  # fmt: skip
    result = invoke(args, jobs)
    assert result.exit_code == 0, result.output
    assert jobs.calls == [
        (
            "run",
            RunOptions(
                inputs=(fasta, fasta),
                run_dir=tmp_path / "r",
                model="esm2_t6_8M_UR50D",
                random_weights=True,
                seed=7,
                input_type=InputType.dna,
                chunk_size=500,
                layers=(-1, 3),
                pooling=(Pooling.bos, Pooling.per_token),
                precision=Precision.bf16,
                token_budget=16384,
                max_length=0,
                checkpoint_every=50,
                checkpoint_interval=2.5,
                force=True,
                placement=Placement(Device.cuda, GpuSpec(("2", "3")), workers=0),
            ),
        )
    ]
    assert not jobs.contexts[0].stop.requested


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pooling", "max"], "'max' is not one of"),
        (["--precision", "fp8"], "'fp8' is not one of"),
        (["--device", "tpu"], "'tpu' is not one of"),
        (["--gpus", "0,x"], "'x' in '0,x' is not a GPU id"),
        (["--gpus", "1,1"], "GPU 1 given more than once"),
        (["--gpus", "0", "--device", "cpu"], "cannot select GPUs with --device cpu"),
        (["--token-budget", "0"], "'0' is not a positive number of tokens or 'auto'"),
        (["--token-budget", "lots"], "'lots' is not a positive number"),
        (["--input-type", "dna", "--chunk-size", "400"], "400 is not one of 300, 500"),
        (["--chunk-size", "300"], "only applies with --input-type dna"),
        (["--layers", "a"], "'a' is not a list of layer numbers"),
        (["--max-length", "-1"], "'--max-length': Input should be greater than or equal to 0"),
        (["--checkpoint-every", "0"], "'--checkpoint-every': Input should be greater than or"),
        (["--checkpoint-interval", "0"], "0.0 is not > 0"),
    ],
)
def test_run_rejects_bad_option(invoke, fasta, tmp_path, args, message):
    jobs = RecordingJobs(SUMMARY)
    result = invoke(["run", str(fasta), "-o", str(tmp_path / "r"), *args], jobs)
    assert result.exit_code == ExitCode.USAGE
    assert message in " ".join(result.output.replace("│", " ").split())
    assert jobs.calls == []


def test_run_token_budget_auto_is_none(invoke, fasta, tmp_path):
    jobs = RecordingJobs(SUMMARY)
    invoke(["run", str(fasta), "-o", str(tmp_path), "--token-budget", "AUTO"], jobs)
    assert jobs.calls[0][1].token_budget is None


def test_missing_input_is_one_line(plugin_path, fasta, tmp_path, capsys):
    jobs = RecordingJobs(SUMMARY)
    missing = tmp_path / "nope.fa"
    code = main(["run", str(fasta), str(missing), "-o", str(tmp_path / "r")], jobs)
    assert code == ExitCode.MISSING_INPUT
    assert capsys.readouterr().err == f"virnucpro: error: input not found: {missing}\n"
    assert jobs.calls == []


def test_resume(invoke, tmp_path):
    jobs = RecordingJobs(SUMMARY)
    result = invoke(["resume", str(tmp_path), "--gpus", "1"], jobs)
    assert result.exit_code == 0, result.output
    assert jobs.calls == [("resume", ResumeOptions(tmp_path, Placement(gpus=GpuSpec(("1",)))))]


def test_resume_of_complete_run_says_so(invoke, tmp_path):
    done = RunSummary(1000, 0, 0, 0.0, tmp_path / "embeddings.h5", already_complete=True)
    result = invoke(["resume", str(tmp_path)], RecordingJobs(done))
    assert result.exit_code == 0
    assert result.output == f"already complete: 1,000 sequences in {tmp_path}/embeddings.h5\n"


def test_resume_missing_run_dir(plugin_path, tmp_path, capsys):
    code = main(["resume", str(tmp_path / "gone")], RecordingJobs(SUMMARY))
    assert code == ExitCode.MISSING_INPUT
    assert (
        capsys.readouterr().err == f"virnucpro: error: run directory not found: {tmp_path}/gone\n"
    )


REPORT = RunReport(
    run_dir=Path("runs/x"),
    state=RunState.interrupted,
    total_sequences=1000,
    completed_sequences=300,
    checkpoints=(
        CheckpointInfo(Path("runs/x/checkpoints/rank_1/s1_00000.h5"), 1, 100, False, "time",
                       None, "checksum mismatch"),
        CheckpointInfo(Path("runs/x/checkpoints/rank_0/s1_00000.h5"), 0, 200, True, "sequences",
                       3 * 2**30),
    ),
    verified=True,
)  # fmt: skip


def test_inspect_json(invoke, tmp_path):
    jobs = RecordingJobs(report=REPORT)
    result = invoke(["inspect-checkpoint", str(tmp_path), "--json", "--verify"], jobs)
    assert result.exit_code == 0, result.output
    assert jobs.calls == [("inspect", (tmp_path, True))]
    data = json.loads(result.output)
    assert (data["state"], data["total_sequences"], data["completed_sequences"]) == (
        "interrupted",
        1000,
        300,
    )
    assert [
        {key: c[key] for key in ("path", "rank", "sequences", "valid")} for c in data["checkpoints"]
    ] == [
        {
            "path": "runs/x/checkpoints/rank_1/s1_00000.h5",
            "rank": 1,
            "sequences": 100,
            "valid": False,
        },
        {
            "path": "runs/x/checkpoints/rank_0/s1_00000.h5",
            "rank": 0,
            "sequences": 200,
            "valid": True,
        },
    ]


def test_inspect_table(invoke, tmp_path):
    result = invoke(["inspect-checkpoint", str(tmp_path)], RecordingJobs(report=REPORT))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "runs/x: interrupted, 300/1,000 sequences (30.0%)"
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert rows == [
        ["0", "s1_00000.h5", "200", "yes", "sequences", "3.0 GiB"],
        ["1", "s1_00000.h5", "100", "NO: checksum mismatch", "time", "-"],
    ]


class FailingJobs(Jobs):
    def __init__(self, error: BaseException):
        self.error = error

    def run(self, options, context):
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (RunDirInUseError("r is in use by pid 7: wait for it or use another -o"),
         ExitCode.RUN_DIR_IN_USE, "error: r is in use by pid 7: wait for it or use another -o"),
        (OSError(28, "No space left on device", "r/c.h5"), ExitCode.DISK_FULL,
         "error: disk full while writing r/c.h5: free some space, then run `virnucpro resume`"),
        (RuntimeError("boom\nsecond line"), ExitCode.INTERNAL,
         "internal error: RuntimeError: boom second line "
         "(run `virnucpro --debug ...` to see the traceback)"),
    ],
)  # fmt: skip
def test_pipeline_errors_become_one_line(plugin_path, fasta, tmp_path, capsys, error, code, line):
    assert main(["run", str(fasta), "-o", str(tmp_path)], FailingJobs(error)) == code
    assert capsys.readouterr().err == f"virnucpro: {line}\n"


def test_debug_shows_traceback(plugin_path, fasta, tmp_path, capsys):
    error = RuntimeError("boom")
    assert main(["--debug", "run", str(fasta), "-o", str(tmp_path)], FailingJobs(error)) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith(
        "RuntimeError: boom\nvirnucpro: internal error: RuntimeError: boom "
        "(run `virnucpro --debug ...` to see the traceback)\n"
    )
