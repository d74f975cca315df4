import subprocess
import sys

import pytest

from virnucpro.ckpt import (
    CheckpointError,
    ManifestMismatchError,
    RunLock,
    RunLockedError,
    check_manifest,
    is_run_locked,
    read_manifest,
    write_manifest,
)


def test_manifest_written_once(make_run):
    run_dir, manifest = make_run(10)
    assert read_manifest(run_dir) == manifest
    with pytest.raises(CheckpointError, match="exists already"):
        write_manifest(run_dir, {**manifest, "model": "other"})
    assert read_manifest(run_dir) == manifest
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json"]


def test_manifest_needs_every_key(tmp_path, synthetic):
    manifest = synthetic.manifest_for(10, 16)
    del manifest["max_length"]
    with pytest.raises(ValueError, match="manifest lacks max_length"):
        write_manifest(tmp_path, manifest)


@pytest.mark.parametrize(
    ("key", "value", "phrase"),
    [
        ("inputs", ["other.fasta"], "inputs (inputs ['synthetic.fasta'] -> ['other.fasta'])"),
        ("input_fingerprint", "abc", "inputs (input_fingerprint 'synthetic-10' -> 'abc')"),
        ("model", "esm2_t6_8M_UR50D", "model (model 'synthetic' -> 'esm2_t6_8M_UR50D')"),
        ("seed", 8, "model (seed 7 -> 8)"),
        ("layers", [4], "layers (layers [2, 4] -> [4])"),
        ("pooling", ["mean"], "pooling (pooling ['mean', 'bos', 'per_token'] -> ['mean'])"),
        ("precision", "bfloat16", "precision (precision 'float32' -> 'bfloat16')"),
        ("max_length", 0, "max length (max_length 20 -> 0)"),
    ],
)
def test_resume_refuses_a_change_and_says_what(make_run, key, value, phrase):
    run_dir, manifest = make_run(10)
    with pytest.raises(ManifestMismatchError) as caught:
        check_manifest(run_dir, {**manifest, key: value})
    message = str(caught.value)
    assert phrase in message
    assert "\n" not in message


def test_two_changes_are_both_named_and_budget_may_change(make_run):
    run_dir, manifest = make_run(10)
    assert check_manifest(run_dir, {**manifest, "token_budget": 1}) == manifest
    with pytest.raises(ManifestMismatchError, match=r"model .*; layers"):
        check_manifest(run_dir, {**manifest, "model": "x", "layers": [1]})


def test_missing_manifest_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="is not a virnucpro run"):
        read_manifest(tmp_path)


HOLD = """
import sys, time
from virnucpro.ckpt import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_lock_excludes_another_process_and_is_never_unlinked(tmp_path, child_env):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_run_locked(tmp_path)
        with pytest.raises(RunLockedError, match="in use by another virnucpro process"):
            RunLock(tmp_path).acquire()
        inode = (tmp_path / "run.lock").stat().st_ino
    finally:
        holder.kill()
        holder.wait()
    assert not is_run_locked(tmp_path)
    with RunLock(tmp_path) as lock:
        assert lock.held and is_run_locked(tmp_path)
    assert not lock.held
    assert (tmp_path / "run.lock").stat().st_ino == inode
