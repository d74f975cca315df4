"""Real processes killed with SIGKILL at random moments, files damaged, then resumed:
the merged result must equal an uninterrupted run's, row for row, every time."""

import os
import signal
import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import inspect_run, resume_from_checkpoints

from .conftest import merged_in_input_order

NUM = 300
RUN_OPTIONS = ("--num", str(NUM), "--delay-ms", "2")


def _finish(spawn_run, run_dir, *options):
    process = spawn_run(run_dir, *RUN_OPTIONS, *options)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    return out


def _kill(spawn_run, run_dir, options, delay=None, at_temp=False):
    """Start a run and SIGKILL its whole process group (a lost node)."""
    process = spawn_run(run_dir, *RUN_OPTIONS, *options)
    deadline = time.monotonic() + (delay if delay is not None else 30)
    caught_temp = False
    while time.monotonic() < deadline and process.poll() is None:
        if at_temp and any(run_dir.glob("checkpoints/rank_*/*.tmp")):
            caught_temp = True
            break
        time.sleep(0.0005)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    return caught_temp


def _assert_same(path, reference):
    data, attrs = merged_in_input_order(path)
    ref_data, ref_attrs = reference
    assert sorted(data) == sorted(ref_data)
    for name, value in ref_data.items():
        assert value.dtype == data[name].dtype, name
        assert np.array_equal(value, data[name]), name
    assert attrs == ref_attrs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, spawn_run, synthetic):
    """An uninterrupted one-rank run, itself checked against the synthetic function."""
    run_dir = tmp_path_factory.mktemp("reference")
    _finish(spawn_run, run_dir)
    data, attrs = merged_in_input_order(run_dir / "embeddings.h5")
    expected = synthetic.synthetic_batch(np.arange(NUM), 16)
    assert [i.decode() for i in data["ids"]] == expected.ids
    for name, value in expected.outputs.items():
        assert np.array_equal(data[name], value), name
    assert np.array_equal(data["embeddings"], expected.outputs["layer_4/mean"])
    return data, attrs


def _corrupt(run_dir, choice, how):
    files = sorted(run_dir.glob("checkpoints/rank_*/*.h5"))
    if not files:
        return None
    path = files[choice % len(files)]
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        with h5py.File(path, "r") as f:
            offset = f["layer_2/per_token"].id.get_offset()
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    return path


sessions = st.lists(
    st.tuples(
        st.integers(1, 3),  # world size of this session
        st.floats(0.0, 0.9),  # kill after this many seconds
        st.booleans(),  # kill the moment a temporary file appears instead
        st.one_of(st.none(), st.tuples(st.integers(0, 50), st.sampled_from(["flip", "truncate"]))),
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sessions=sessions,
    seq_threshold=st.integers(1, 120),
    time_threshold=st.sampled_from([0.005, 0.05, 300.0]),
    final_world=st.integers(1, 3),
)
def test_killed_runs_resume_to_the_uninterrupted_result(
    tmp_path_factory, spawn_run, reference, sessions, seq_threshold, time_threshold, final_world
):
    run_dir = tmp_path_factory.mktemp("killed")
    trigger = ("--seq-threshold", str(seq_threshold), "--time-threshold", str(time_threshold))
    corrupted = []
    for world, delay, at_temp, damage in sessions:
        _kill(spawn_run, run_dir, ("--world-size", str(world), *trigger), delay, at_temp)
        if damage is not None:
            path = _corrupt(run_dir, *damage)
            if path is not None and not (run_dir / "embeddings.h5").exists():
                corrupted.append(path)
    _finish(spawn_run, run_dir, "--world-size", str(final_world), *trigger)
    _assert_same(run_dir / "embeddings.h5", reference)
    quarantined = {p.name for p in (run_dir / "quarantine").glob("*")}
    assert all(f"{p.parent.name}__{p.name}" in quarantined for p in corrupted)
    report = inspect_run(run_dir, verify=True)
    assert (report["state"], report["completed_sequences"]) == ("complete", NUM)
    assert all(c["valid"] for c in report["checkpoints"])
    # Resuming again, with another rank count, changes nothing.
    before = sorted(run_dir.glob("checkpoints/rank_*/*.h5"))
    _finish(spawn_run, run_dir, "--world-size", str(final_world % 3 + 1), *trigger)
    assert sorted(run_dir.glob("checkpoints/rank_*/*.h5")) == before
    _assert_same(run_dir / "embeddings.h5", reference)
    done = resume_from_checkpoints(run_dir, quarantine=False).done_indices
    assert np.array_equal(done, np.arange(NUM))


def test_kill_during_a_write_leaves_only_a_temporary_file(tmp_path, spawn_run, reference):
    """Kill the moment a checkpoint's temporary file exists; resume removes it."""
    options = ("--seq-threshold", "60", "--width", "16")
    caught = 0
    for attempt in range(10):
        run_dir = tmp_path / f"run{attempt}"
        if not _kill(spawn_run, run_dir, options, at_temp=True):
            continue
        caught += 1
        temps = sorted(run_dir.glob("checkpoints/rank_*/*.tmp"))
        _finish(spawn_run, run_dir, *options)
        _assert_same(run_dir / "embeddings.h5", reference)
        assert temps and not any(t.exists() for t in temps)
        assert not list((run_dir / "quarantine").glob("*.tmp*"))
        if caught == 3:
            break
    assert caught >= 1
