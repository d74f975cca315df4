import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    CheckpointBatch,
    CheckpointWriteError,
    validate_checkpoint_hdf5,
)

WIDTH = 16


def test_writes_every_queued_checkpoint_under_session_names(make_run, synthetic):
    run_dir, manifest = make_run(100)
    writer = AsyncCheckpointWriter(run_dir, manifest, rank=2, world_size=3, max_pending=1)
    paths = [
        writer.write_checkpoint_async(
            synthetic.synthetic_batch(np.arange(s, s + 10), WIDTH), "sequence_count", 5, 9
        )
        for s in range(0, 100, 10)
    ]
    writer.wait_all()
    writer.shutdown()
    assert [p.name for p in paths] == [f"{writer.session}_{i:05d}.h5" for i in range(10)]
    assert all(p.parent.name == "rank_2" for p in paths)
    for sequence, path in enumerate(paths):
        info = validate_checkpoint_hdf5(path, manifest)
        assert info.sequence == sequence
        assert info.attrs["gpu_memory_allocated_bytes"] == 5
        assert info.attrs["gpu_memory_peak_bytes"] == 9
        assert info.attrs["trigger_reason"] == "sequence_count"
    assert writer.stats.checkpoints_written == 10
    assert writer.stats.sequences_written == 100
    with pytest.raises(CheckpointWriteError, match="shut down"):
        writer.write_checkpoint_async(synthetic.synthetic_batch(np.arange(1), WIDTH), "x")


def test_two_writers_never_collide(make_run, synthetic):
    run_dir, manifest = make_run(20)
    names = set()
    for start in (0, 10):
        with AsyncCheckpointWriter(run_dir, manifest) as writer:
            batch = synthetic.synthetic_batch(np.arange(start, start + 10), WIDTH)
            names.add(writer.write_checkpoint_async(batch, "final").name)
    assert len(names) == 2


def test_failed_write_is_raised_by_wait_all_and_later_writes_go_on(make_run, synthetic):
    run_dir, manifest = make_run(30)
    writer = AsyncCheckpointWriter(run_dir, manifest, session="s1")
    (run_dir / "checkpoints" / "rank_0" / "s1_00001.h5.tmp").mkdir()
    batches = [synthetic.synthetic_batch(np.arange(s, s + 10), WIDTH) for s in (0, 10, 20)]
    writer.write_checkpoint_async(batches[0], "t")
    writer.wait_all()
    writer.write_checkpoint_async(batches[1], "t")
    with pytest.raises(CheckpointWriteError, match=r"1 checkpoint write\(s\) failed: s1_00001"):
        writer.wait_all()
    writer.write_checkpoint_async(batches[2], "t")
    writer.shutdown()
    assert writer.stats.checkpoints_written == 2


def test_failed_write_is_raised_at_the_producers_next_call(make_run, synthetic):
    run_dir, manifest = make_run(20)
    writer = AsyncCheckpointWriter(run_dir, manifest, session="s3")
    (run_dir / "checkpoints" / "rank_0" / "s3_00000.h5.tmp").mkdir()
    writer.write_checkpoint_async(synthetic.synthetic_batch(np.arange(10), WIDTH), "t")
    while writer.pending:
        time.sleep(0.001)
    with pytest.raises(CheckpointWriteError, match="s3_00000"):
        writer.write_checkpoint_async(synthetic.synthetic_batch(np.arange(10, 20), WIDTH), "t")
    writer.shutdown()


def test_failure_is_reported_by_shutdown(make_run, synthetic):
    run_dir, manifest = make_run(10)
    writer = AsyncCheckpointWriter(run_dir, manifest, session="s2")
    (run_dir / "checkpoints" / "rank_0" / "s2_00000.h5.tmp").mkdir()
    writer.write_checkpoint_async(synthetic.synthetic_batch(np.arange(10), WIDTH), "final")
    with pytest.raises(CheckpointWriteError, match="s2_00000"):
        writer.shutdown()


def test_inconsistent_batch_is_refused_before_queueing():
    with pytest.raises(ValueError, match="lengths has 1 rows, indices 2"):
        CheckpointBatch(indices=[0, 1], ids=["a", "b"], lengths=[3], truncated=[0, 0])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_joined_parts_are_the_batch_of_their_rows_in_index_order(synthetic, data):
    """Whatever the parts (any order of rows, any split, empty parts too), every row
    comes out once, in increasing input-index order, with its per-token segment."""
    count = data.draw(st.integers(1, 40))
    rows = data.draw(st.permutations(range(count)))
    cuts = sorted(data.draw(st.lists(st.integers(0, count), max_size=6)))
    groups = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, count], strict=True)]
    parts = [synthetic.synthetic_batch(np.array(g, dtype=np.int64), WIDTH) for g in groups]
    joined = CheckpointBatch.join(parts)
    expected = synthetic.synthetic_batch(np.arange(count), WIDTH)
    assert joined.indices.tolist() == list(range(count))
    assert joined.ids == expected.ids
    assert np.array_equal(joined.lengths, expected.lengths)
    assert np.array_equal(joined.truncated, expected.truncated)
    assert sorted(joined.outputs) == sorted(expected.outputs)
    for name, value in expected.outputs.items():
        assert joined.outputs[name].dtype == value.dtype, name
        assert np.array_equal(joined.outputs[name], value), name
    assert joined.sorted_by_index() is joined


def test_file_rows_sorted_by_index(make_run, write_rows):
    run_dir, manifest = make_run(20)
    (path,) = write_rows(run_dir, manifest, [np.array([19, 4, 11, 0])])
    with h5py.File(path, "r") as f:
        assert f["indices"][()].tolist() == [0, 4, 11, 19]
