"""``run``, ``resume`` and ``inspect-checkpoint`` through ``main(argv)`` and the real engine.

Runs are real (tiny random-weight ESM-2 on the CPU, a handful of short proteins), so
what an option means is read back from the manifest the engine wrote; option parsing
that needs no run is checked on the one line a person sees.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import h5py
import pytest

from virnucpro.cli.errors import EXIT_CODES, ExitCode, exit_code_of
from virnucpro.cli.main import main
from virnucpro.cli.plugins import ALLOW_VAR, BLOCK_VAR
from virnucpro.infer.job import errors as job_errors
from virnucpro.infer.job.ranks import RankFailedError

MODEL = "esm2_t6_8M_UR50D"
TINY = ["--model", MODEL, "--random-weights", "--device", "cpu", "--workers", "0"]
PROTEINS = ("MKVLAAGIVW", "MSTQWHEKLR", "MWPGRSTAC", "MKKLLPTEAGHQ")
# Every option that changes what is computed, none at its default; one protein per
# batch and a checkpoint after each, kept, so a checkpoint can be taken away below.
EVERY_OPTION = [
    *TINY,
    "--seed", "7", "--layers", "-1,3", "--pooling", "bos", "--pooling", "per-token",
    "--pooling", "bos", "--precision", "fp32", "--token-budget", "16", "--max-length", "0",
    "--checkpoint-every", "1", "--checkpoint-interval", "2.5", "--keep-checkpoints",
]  # fmt: skip

Outcome = tuple[int, str, str]


def call(args: Sequence[object]) -> Outcome:
    """``main`` in this process: exit code, stdout, stderr."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write_fasta(path: Path, sequences: Sequence[str], prefix: str = "p") -> Path:
    path.write_text("".join(f">{prefix}{n} test\n{s}\n" for n, s in enumerate(sequences)))
    return path


def checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("rank_*/*.h5"))


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def module_plugins(cli_dist: list[Path]):
    """What ``plugin_path`` does, for module fixtures: the built-ins, no plugin variables."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(BLOCK_VAR, raising=False)
        patch.delenv(ALLOW_VAR, raising=False)
        for path in cli_dist:
            patch.syspath_prepend(str(path))
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return (
        write_fasta(folder / "first.fasta", PROTEINS[:2], "a"),
        write_fasta(folder / "second.fasta", PROTEINS[2:], "b"),
    )


@pytest.fixture(scope="module")
def finished(module_plugins, inputs, tmp_path_factory) -> tuple[Path, list[str], Outcome]:
    """One complete run with every option; tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    args = ["run", *map(str, inputs), "-o", str(run_dir), *EVERY_OPTION]
    return run_dir, args, call(args)


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    return write_fasta(tmp_path / "reads.fa", PROTEINS[:2])


def test_every_option_reaches_the_manifest(finished, inputs):
    run_dir, _, (code, out, err) = finished
    assert code == 0, err
    stored = manifest(run_dir)
    expected = {
        "inputs": [str(path.resolve()) for path in inputs],
        "input_type": "protein",
        "num_sequences": 4,
        "model": MODEL,
        "model_backend": "esm2",
        "model_source": "random",
        "random_weights": True,
        "seed": 7,
        "num_layers": 6,
        "layers": [3, 6],
        "pooling": ["bos", "per_token"],
        "precision": "fp32",
        "token_budget": 16,
        "token_budget_auto": False,
        "max_length": 0,
        "checkpoint_every": 1,
        "checkpoint_interval": 2.5,
        "keep_checkpoints": True,
        "output_format": "hdf5",
    }
    assert {key: stored[key] for key in expected} == expected
    tokens = sum(len(p) + 2 for p in PROTEINS)
    lines = out.splitlines()
    assert lines[0] == "done: 4 sequences"
    assert re.fullmatch(rf"tokens: {tokens} in \d+:\d\d:\d\d \([\d,]+ tokens/s\)", lines[1])
    assert lines[2:] == [f"output: {run_dir / 'embeddings.h5'}"]
    progress = err.splitlines()
    assert progress[0].startswith("progress: 0/4 sequences (0.0%)")
    assert progress[-1].startswith("progress: 4/4 sequences (100.0%)")
    assert all(line.startswith("progress: ") for line in progress)
    assert len(checkpoint_files(run_dir)) == 4


def test_the_same_finished_run_again_is_already_complete(finished):
    run_dir, args, (code, _, _) = finished
    assert code == 0
    output = run_dir / "embeddings.h5"
    written = output.stat().st_mtime_ns
    again_code, out, err = call(args)
    assert (again_code, err) == (0, "")
    assert out == (
        f"already complete: 4 sequences in {output} "
        "(to compute it again: virnucpro run ... --force)\n"
    )
    assert output.stat().st_mtime_ns == written


def test_another_configuration_is_refused_naming_the_differences(finished, inputs):
    run_dir, args, _ = finished
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    other = [*args[: args.index("--seed")], "--seed", "8", "--pooling", "mean", "--layers", "3"]
    code, out, err = call(other)
    assert (code, out) == (ExitCode.RUN_DIR_MISMATCH, "")
    assert one_line(err) == (
        f"virnucpro: error: {run_dir} already holds another run (pooling ['bos', 'per_token'] "
        "-> ['mean']; max length 0 -> 1022; seed 7 -> 8; layers [3, 6] -> [3]): continue it "
        f"with `virnucpro resume {run_dir}`, choose another output directory, or start over "
        "with --force"
    )
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_stopped_run_is_refused_inspected_and_resumed(finished, tmp_path, monkeypatch):
    """Take two checkpoints away (one deleted, one damaged): `run` points to `resume`,
    `inspect-checkpoint` shows what is valid, `resume` says what it set aside and
    embeds only what is missing."""
    source, args, _ = finished
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    (run_dir / "embeddings.h5").unlink()
    shutil.rmtree(run_dir / "embeddings_per_token")  # the output whole: its parts would restore
    deleted, damaged, *kept = checkpoint_files(run_dir)
    deleted.unlink()
    with h5py.File(damaged, "r+") as f:
        f["indices"][0] = f["indices"][0] + 1

    code, out, err = call([*args[: args.index("-o") + 1], run_dir, *args[args.index("-o") + 2 :]])
    assert (code, out) == (ExitCode.RUN_DIR_MISMATCH, "")
    assert one_line(err) == (
        f"virnucpro: error: {run_dir} holds this run, stopped at 2/4 sequences: continue it "
        f"with `virnucpro resume {run_dir}`, or start over with --force"
    )

    code, out, err = call(["inspect-checkpoint", run_dir, "--json", "--verify"])
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["state"], report["total_sequences"], report["verified"]) == (
        "interrupted",
        4,
        True,
    )
    assert report["completed_sequences"] == 2
    validity = {Path(c["path"]).name: (c["valid"], c["problem"]) for c in report["checkpoints"]}
    assert validity[damaged.name][0] is False and validity[damaged.name][1]
    assert all(validity[path.name] == (True, None) for path in kept)

    monkeypatch.setenv("COLUMNS", "200")
    code, table, _ = call(["inspect-checkpoint", run_dir, "--verify"])
    assert code == 0
    assert table.splitlines()[0] == f"{run_dir}: interrupted, 2/4 sequences (50.0%)"
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    rows = [row for row in rows if row and row[0].isdigit()]
    assert len(rows) == 3 and sum(row[3] == "yes" for row in rows) == 2
    assert next(row for row in rows if row[1] == damaged.name)[3].startswith("NO:")

    code, out, err = call(["resume", run_dir, "--device", "cpu", "--workers", "0"])
    assert code == 0, err
    assert out.splitlines()[0] == "done: 4 sequences (2 now, 2 before resuming)"
    said = [line for line in err.splitlines() if not line.startswith("progress: ")]
    assert len(said) == 1 and said[0].startswith(f"virnucpro: quarantined {damaged}: ")
    progress = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert progress[0].startswith("progress: 2/4 sequences")
    assert progress[-1].startswith("progress: 4/4 sequences")
    with (
        h5py.File(run_dir / "embeddings.h5", "r") as resumed,
        h5py.File(source / "embeddings.h5", "r") as original,
    ):
        assert list(resumed["ids"].asstr()) == list(original["ids"].asstr())
        for name in original:
            if isinstance(original[name], h5py.Dataset):
                assert (resumed[name][()] == original[name][()]).all(), name


def test_force_moves_the_old_run_beside_the_run_dir(finished, inputs, tmp_path):
    source, _, _ = finished
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    code, out, err = call(["run", inputs[0], "-o", run_dir, *TINY, "--force"])
    assert code == 0, err
    (moved,) = tmp_path.glob("run.replaced-*")
    assert f"virnucpro: --force: the previous run in {run_dir} was moved to {moved}" in err
    old = {"manifest.json", "checkpoints", "embeddings.h5", "embeddings_per_token"}
    assert {p.name for p in moved.iterdir()} == old
    assert manifest(moved) == manifest(source)
    assert not list(run_dir.glob("*replaced*"))
    assert out.splitlines()[0] == "done: 2 sequences"
    stored = manifest(run_dir)
    defaults = {
        "inputs": [str(inputs[0].resolve())],
        "seed": 0,
        "layers": [6],
        "pooling": ["mean"],
        "precision": "fp32",
        "token_budget": 4096,
        "token_budget_auto": True,
        "max_length": 1022,
        "checkpoint_every": 10_000,
        "checkpoint_interval": 300.0,
        "keep_checkpoints": False,
        "output_format": "hdf5",
    }
    assert {key: stored[key] for key in defaults} == defaults
    # The output is verified, so the checkpoints are gone: the data is on disk once.
    assert {p.name for p in run_dir.iterdir()} == {"manifest.json", "embeddings.h5", "run.lock"}


@pytest.mark.parametrize(
    ("text", "code", "phrase"),
    [
        ("MKV\n", ExitCode.BAD_INPUT, "not FASTA"),
        (">a\nMKV\n>a\nMKL\n", ExitCode.BAD_INPUT, "duplicate ids"),
    ],
)
def test_failure_before_any_work_leaves_no_run_dir(plugin_path, tmp_path, text, code, phrase):
    path = tmp_path / "in.fasta"
    path.write_text(text)
    run_dir = tmp_path / "new" / "run"
    result, out, err = call(["run", path, "-o", run_dir, *TINY])
    assert (result, out) == (code, "")
    assert phrase in one_line(err)
    assert not run_dir.exists()


def test_weights_unavailable_leaves_no_run_dir(plugin_path, fasta, tmp_path):
    run_dir = tmp_path / "run"
    weights = tmp_path / "missing.pt"
    code, _, err = call(["run", fasta, "-o", run_dir, "--model", weights, "--device", "cpu"])
    assert code == ExitCode.WEIGHTS_UNAVAILABLE
    assert str(weights) in one_line(err)
    assert not run_dir.exists()


def test_unknown_format_leaves_no_run_dir(plugin_path, fasta, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = call(["run", fasta, "-o", run_dir, *TINY, "--format", "parquet"])
    assert code == ExitCode.USAGE
    assert one_line(err) == (
        "virnucpro: error: output format 'parquet' is not registered (registered: hdf5)"
    )
    assert not run_dir.exists()


def test_a_directory_the_person_made_is_kept_after_a_failure(plugin_path, tmp_path):
    path = tmp_path / "in.fasta"
    path.write_text("MKV\n")
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    code, _, _ = call(["run", path, "-o", run_dir, *TINY])
    assert code == ExitCode.BAD_INPUT
    assert run_dir.is_dir() and not (run_dir / "manifest.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pooling", "median"], "Invalid value for '--pooling': 'median' is not one of"),
        (["--precision", "fp8"], "Invalid value for '--precision': 'fp8' is not one of"),
        (["--device", "tpu"], "'tpu' is not one of"),
        (["--gpus", "0,x"], "'x' in '0,x' is not a GPU id"),
        (["--gpus", "1,1"], "GPU 1 given more than once"),
        (["--gpus", "0", "--device", "cpu"], "cannot select GPUs with --device cpu"),
        (["--token-budget", "0"], "'0' is not a positive number of tokens or 'auto'"),
        (["--token-budget", "lots"], "'lots' is not a positive number"),
        (["--input-type", "dna", "--chunk-size", "400"], "400 is not one of 300, 500"),
        (["--chunk-size", "300"], "only applies with --input-type dna"),
        (["--layers", "a"], "'a' is not a list of layers such as 33"),
        (["--layers", "5-3"], "range '5-3' in '5-3'"),
        (["--layers", ""], "Invalid value for --layers: is empty"),
        (["--layers", "2,2"], "a layer is given more than once"),
        (["--max-length", "-1"], "'--max-length': Input should be greater than or equal to 0"),
        (
            ["--checkpoint-every", "0"],
            "'--checkpoint-every': Input should be greater than or equal to 1",
        ),
        (["--checkpoint-interval", "0"], "0.0 is not > 0"),
        (["--processes", "0"], "'--processes': Input should be greater than or equal to 1"),
        (["--workers", "-1"], "'--workers': Input should be greater than or equal to 0"),
        (["--no-such-option"], "No such option: --no-such-option"),
    ],
)
def test_usage_errors_are_one_line_exit_2(plugin_path, fasta, tmp_path, args, message):
    run_dir = tmp_path / "run"
    code, out, err = call(["run", fasta, "-o", run_dir, *args])
    assert (code, out) == (ExitCode.USAGE, "")
    line = one_line(err)
    assert line.startswith("virnucpro: error: ")
    assert line.endswith("(see `virnucpro run --help`)")
    assert message in line
    assert not run_dir.exists()


def test_missing_input_is_one_line(plugin_path, fasta, tmp_path):
    missing = tmp_path / "nope.fa"
    code, _, err = call(["run", fasta, missing, "-o", tmp_path / "r"])
    assert code == ExitCode.MISSING_INPUT
    assert err == f"virnucpro: error: input not found: {missing}\n"
    assert not (tmp_path / "r").exists()


def test_resume_missing_run_dir(plugin_path, tmp_path):
    code, _, err = call(["resume", tmp_path / "gone"])
    assert code == ExitCode.MISSING_INPUT
    assert err == f"virnucpro: error: run directory not found: {tmp_path}/gone\n"


def normalized_help(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[str, str]:
    """Help at 80 columns: the text, and the text with its whitespace joined."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = call(args)
    assert (code, err) == (0, "")
    assert max(map(len, out.splitlines())) <= 80, out
    return out, " ".join(out.split())


def test_run_help_shows_whole_defaults_and_no_type_names(plugin_path, monkeypatch):
    out, text = normalized_help(monkeypatch, ["run", "--help"])
    for default in (
        "[default: esm2_t36_3B_UR50D]",
        "[default: 0]",
        "[default: last]",
        "[default: mean]",
        "[default: auto]",
        "[default: hdf5]",
        "[default: protein]",
        "[default: 300]",
        "[default: 1022; x>=0]",
        "[default: all]",
        "[default: 0; x>=0]",
        "[default: 1; x>=1]",
        "[default: 10000; x>=1]",
        "[default: 300.0]",
    ):
        assert default in text, default
    for type_name in ("<bool>", "<list[", "{FASTA}", "<path>", "<int>", "<float>", "<str>"):
        assert type_name not in out.lower(), type_name
    assert "Usage: virnucpro run [OPTIONS] FASTA..." in text
    for flag in ("--random-weights", "--force"):
        (line,) = [line for line in out.splitlines() if line.strip().startswith(flag)]
        assert line.split()[1] != "BOOLEAN", line


def test_inspect_help_shows_json_as_a_flag(plugin_path, monkeypatch):
    out, _ = normalized_help(monkeypatch, ["inspect-checkpoint", "--help"])
    (line,) = [line for line in out.splitlines() if "--json" in line]
    assert line.split()[:2] == ["--json", "Print"], line
    _, resume = normalized_help(monkeypatch, ["resume", "--help"])
    assert "Usage: virnucpro resume [OPTIONS] RUN_DIR" in resume


def test_every_job_error_has_its_own_exit_code():
    """A new JobError type without an exit code would show as an internal error."""
    raised = {
        cls
        for cls in vars(job_errors).values()
        if isinstance(cls, type) and issubclass(cls, job_errors.JobError)
    } - {job_errors.JobError, job_errors.RunStopped}
    assert raised == set(EXIT_CODES)
    codes = [exit_code_of(cls("x")) for cls in raised]
    assert len(set(codes)) == len(codes)
    assert ExitCode.INTERNAL not in codes
    assert exit_code_of(job_errors.DeviceMemoryError("x")) == 15
    assert exit_code_of(job_errors.ModelTooLargeError("x")) == 12
    assert exit_code_of(job_errors.WorkerFailedError("x")) == 13
    assert exit_code_of(job_errors.OutputError("x")) == 14


def test_other_ranks_exit_with_the_code_of_rank_0s_error():
    error = RankFailedError("rank 0: in.fa: not FASTA", "BadInputError")
    assert exit_code_of(error) == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    ("kind", "code", "line"),
    [
        ("bad", ExitCode.BAD_INPUT, "error: reads.fa: record 3 is empty: remove it"),
        ("nogpu", ExitCode.NO_GPU, "error: --device cuda but no GPU is visible"),
        ("inuse", ExitCode.RUN_DIR_IN_USE, "error: runs/x is in use by process 12"),
        ("enospc", ExitCode.DISK_FULL,
         "error: disk full while writing runs/x/c.h5: free some space, then run "
         "`virnucpro resume`"),
        ("bug", ExitCode.INTERNAL,
         "internal error: ZeroDivisionError: division by zero "
         "(run `virnucpro --debug ...` to see the traceback)"),
    ],
)  # fmt: skip
def test_errors_of_a_plugin_command_are_one_line(plugin_path, demo_plugin, kind, code, line):
    plugin_path(demo_plugin)
    assert call(["demo-fail", kind]) == (code, "", f"virnucpro: {line}\n")


def test_debug_shows_traceback(plugin_path, demo_plugin):
    plugin_path(demo_plugin)
    code, _, err = call(["--debug", "demo-fail", "bug"])
    assert code == ExitCode.INTERNAL
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith(
        "ZeroDivisionError: division by zero\nvirnucpro: internal error: ZeroDivisionError: "
        "division by zero (run `virnucpro --debug ...` to see the traceback)\n"
    )


NO_TORCH = """
import sys
import virnucpro.cli.main
from virnucpro.cli.main import main
assert "torch" not in sys.modules, "import"
for args in (["--version"], ["run", "--help"], ["resume", "--help"], ["--help"]):
    try:
        main(args)
    except SystemExit:
        pass
    assert "torch" not in sys.modules, args
print("no torch")
"""


def test_the_entry_point_does_not_import_torch(child_env: Callable[..., dict[str, str]]):
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH], env=child_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no torch"


def test_inspect_a_finished_run_without_checkpoints(plugin_path, fasta, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = call(["run", fasta, "-o", run_dir, *TINY])
    assert code == 0, err
    assert not (run_dir / "checkpoints").exists()
    code, out, err = call(["inspect-checkpoint", run_dir, "--json"])
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["state"], report["completed_sequences"], report["total_sequences"]) == (
        "complete",
        2,
        2,
    )
