import h5py
import numpy as np
import pytest

from virnucpro.ckpt import (
    ManifestMismatchError,
    MergeError,
    RunLock,
    inspect_run,
    merge_checkpoints,
    quarantine_messages,
    remove_stale_temporaries,
    resume_from_checkpoints,
)

from .conftest import merged_in_input_order

WIDTH = 16


def _assert_merged_equals_synthetic(path, synthetic, num):
    expected = synthetic.synthetic_batch(np.arange(num), WIDTH)
    data, attrs = merged_in_input_order(path)
    assert [i.decode() for i in data["ids"]] == expected.ids
    assert np.array_equal(data["lengths"], expected.lengths)
    assert np.array_equal(data["truncated"], expected.truncated)
    for name, value in expected.outputs.items():
        assert np.array_equal(data[name], value), name
    assert np.array_equal(data["embeddings"], expected.outputs["layer_4/mean"])
    assert attrs["model"] == '"synthetic"'


def test_resume_returns_sorted_unique_done_across_ranks(make_run, write_rows):
    run_dir, manifest = make_run(40)
    write_rows(run_dir, manifest, [np.array([30, 2]), np.array([7])], rank=0, world_size=3)
    write_rows(run_dir, manifest, [np.array([5, 1, 39])], rank=2, world_size=3)
    result = resume_from_checkpoints(run_dir, manifest)
    assert result.done_indices.tolist() == [1, 2, 5, 7, 30, 39]
    assert result.done_indices.dtype == np.int64
    assert (result.num_done, result.num_left, len(result.checkpoints)) == (6, 34, 3)
    assert result.quarantined == []


def test_damaged_and_stray_files_move_aside_and_temporaries_are_removed(make_run, write_rows):
    run_dir, manifest = make_run(40)
    paths = write_rows(run_dir, manifest, [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)])
    with open(paths[1], "r+b") as f:
        f.truncate(300)
    partial = paths[2].with_name(paths[2].name + ".tmp")
    paths[2].rename(partial)
    stray = paths[0].parent / "notes.txt"
    stray.write_text("x")
    merge_temp = run_dir / ".embeddings.h5.abc.tmp"
    merge_temp.write_bytes(b"half")
    manifest_temp = run_dir / ".manifest.json.123.tmp"
    manifest_temp.write_text("{")
    (run_dir / "quarantine").mkdir()
    old_merge_temps = [
        run_dir / "quarantine" / n for n in (".embeddings.h5.x.tmp", ".embeddings.h5.x.tmp.1")
    ]
    kept = run_dir / "quarantine" / "rank_0__old_00001.h5"
    for path in (*old_merge_temps, kept):
        path.write_bytes(b"old")
    with RunLock(run_dir):
        result = resume_from_checkpoints(run_dir, manifest)
    assert result.done_indices.tolist() == list(range(10))
    moved = {q.source: q for q in result.quarantined}
    assert set(moved) == {paths[1], stray}
    assert "unreadable" in moved[paths[1]].reason
    for q in result.quarantined:
        assert q.destination.parent == run_dir / "quarantine" and q.destination.exists()
        assert not q.source.exists()
    assert moved[paths[1]].destination.stat().st_size == 300
    removed = [partial, merge_temp, manifest_temp, *old_merge_temps]
    assert sorted(result.removed_temporaries) == sorted(removed)
    assert not any(p.exists() for p in removed) and kept.exists()
    assert list(run_dir.rglob("*.tmp*")) == []


def test_temporaries_of_a_session_still_writing_stay(make_run, write_rows):
    run_dir, manifest = make_run(20)
    (path,) = write_rows(run_dir, manifest, [np.arange(5)], session="live")
    writing = path.with_name("live_00001.h5.tmp")
    writing.write_bytes(b"x")
    stale = path.with_name("dead_00000.h5.tmp")
    stale.write_bytes(b"x")
    assert remove_stale_temporaries(run_dir, keep_sessions={"live"}) == [stale]
    assert writing.exists()


def test_report_only_mode_moves_nothing(make_run, write_rows):
    run_dir, manifest = make_run(20)
    (path,) = write_rows(run_dir, manifest, [np.arange(5)])
    with open(path, "r+b") as f:
        f.truncate(100)
    result = resume_from_checkpoints(run_dir, quarantine=False)
    assert result.num_done == 0
    assert [(q.source, q.destination) for q in result.quarantined] == [(path, None)]
    assert path.exists()


def test_a_file_repeating_rows_is_set_aside_so_nothing_doubles(make_run, write_rows):
    run_dir, manifest = make_run(20)
    (first,) = write_rows(run_dir, manifest, [np.arange(0, 6)], session="a")
    (later,) = write_rows(run_dir, manifest, [np.arange(4, 10)], rank=1, session="b")
    with pytest.raises(MergeError, match=f"row 4 is duplicated: it is in {first} and {later}"):
        merge_checkpoints(run_dir)
    result = resume_from_checkpoints(run_dir, manifest)
    assert result.done_indices.tolist() == list(range(6))
    (moved,) = result.quarantined
    assert moved.source == later and f"repeats row 4 already in {first}" in moved.reason


def test_resume_refuses_changed_configuration(make_run):
    run_dir, manifest = make_run(20)
    with pytest.raises(ManifestMismatchError, match="pooling"):
        resume_from_checkpoints(run_dir, {**manifest, "pooling": ["mean"]})


def test_merge_names_missing_rows(make_run, write_rows):
    run_dir, manifest = make_run(20)
    write_rows(run_dir, manifest, [np.array([i for i in range(20) if i not in (3, 17)])])
    with pytest.raises(MergeError, match=r"2 of 20 rows are missing \(input indices 3, 17\)"):
        merge_checkpoints(run_dir)
    assert not (run_dir / "embeddings.h5").exists()
    assert list(run_dir.glob(".*tmp")) == []


def test_merge_refuses_an_invalid_file(make_run, write_rows):
    run_dir, manifest = make_run(20)
    (path,) = write_rows(run_dir, manifest, [np.arange(20)])
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(MergeError, match="run resume to move it aside"):
        merge_checkpoints(run_dir)


@pytest.mark.parametrize("budget", [1, 3000, 256 * 2**20])
def test_merge_in_input_order_whatever_the_memory_budget(make_run, write_rows, synthetic, budget):
    run_dir, manifest = make_run(60)
    order = np.random.default_rng(1).permutation(60)
    for rank in range(3):
        groups = np.array_split(order[rank::3], 4)
        write_rows(run_dir, manifest, groups, rank=rank, world_size=3)
    path = merge_checkpoints(run_dir, memory_budget_bytes=budget)
    _assert_merged_equals_synthetic(path, synthetic, 60)
    assert list(run_dir.glob(".*tmp")) == []


def test_inspect_reports_ranks_validity_and_state(make_run, write_rows):
    run_dir, manifest = make_run(30)
    write_rows(run_dir, manifest, [np.arange(0, 10), np.arange(10, 15)], rank=0, world_size=2)
    (bad,) = write_rows(run_dir, manifest, [np.arange(15, 20)], rank=1, world_size=2)
    offset_file = h5py.File(bad, "r")
    offset = offset_file["layer_2/mean"].id.get_offset()
    offset_file.close()
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff\xff\xff\xff")
    quick = inspect_run(run_dir)
    assert (quick["state"], quick["completed_sequences"], quick["total_sequences"]) == (
        "interrupted",
        20,
        30,
    )
    report = inspect_run(run_dir, verify=True)
    assert report["completed_sequences"] == 15 and report["remaining_sequences"] == 15
    by_path = {c["path"]: c for c in report["checkpoints"]}
    assert by_path[str(bad)]["valid"] is False and "checksum" in by_path[str(bad)]["problem"]
    assert by_path[str(bad)]["sequences"] == 5 and by_path[str(bad)]["rank"] == 1
    good = [c for c in report["checkpoints"] if c["valid"]]
    assert [c["sequences"] for c in good] == [10, 5]
    assert all(c["trigger_reason"] == "test" and c["rank"] == 0 for c in good)
    assert report["ranks"] == {
        "0": {"checkpoints": 2, "sequences": 15},
        "1": {"checkpoints": 1, "sequences": 0},
    }
    with RunLock(run_dir):
        assert inspect_run(run_dir)["state"] == "running"
    assert bad.exists()


@pytest.mark.parametrize("move", [True, False])
def test_every_rejected_checkpoint_is_said_in_one_line(make_run, write_rows, synthetic, move):
    run_dir, manifest = make_run(40)
    paths = write_rows(run_dir, manifest, [np.arange(0, 10), np.arange(10, 20)])
    (foreign,) = write_rows(run_dir, {**manifest, "seed": 99}, [np.arange(20, 30)], rank=1)
    (repeat,) = write_rows(run_dir, manifest, [np.arange(5, 12)], rank=2, session="zz")
    with open(paths[1], "r+b") as f:
        f.truncate(2000)
    with RunLock(run_dir):
        result = resume_from_checkpoints(run_dir, manifest, quarantine=move)
    assert result.done_indices.tolist() == list(range(10))
    lines = quarantine_messages(result.quarantined)
    assert len(lines) == 3
    by_source = dict(zip((q.source for q in result.quarantined), lines, strict=True))
    assert set(by_source) == {paths[1], foreign, repeat}
    for q, line in zip(result.quarantined, lines, strict=True):
        assert "\n" not in line and str(q.source) in line and q.reason in line
        assert not q.reason.startswith(str(q.source))
        assert q.source.exists() is not move
        assert line.startswith("quarantined" if move else "not used")
    assert "unreadable" in by_source[paths[1]]
    assert "seed 99 differs from the run's 7" in by_source[foreign]
    assert f"repeats row 5 already in {paths[0]}" in by_source[repeat]
