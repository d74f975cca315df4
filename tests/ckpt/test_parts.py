"""A per-token output's parts: the checkpoints themselves, linked beside the merged file.

The output must outlive its checkpoints, move with its folder, refuse to read with a
part missing (a virtual dataset would silently read NaN), and be rebuilt whole by a
second merge; filesystems without hard links get copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from virnucpro.ckpt import (
    EmbeddingsFileError,
    inspect_run,
    merge_checkpoints,
    open_embeddings,
    remove_stale_temporaries,
    restore_checkpoints,
    resume_from_checkpoints,
    verify_output,
)
from virnucpro.ckpt.layout import PARTS_DIR

from .conftest import merged_in_input_order

NUM = 30


@pytest.fixture
def run(make_run, write_rows):
    run_dir, manifest = make_run(NUM)
    order = np.random.default_rng(4).permutation(NUM)
    write_rows(run_dir, manifest, np.array_split(order[::2], 2), rank=0, world_size=2)
    write_rows(run_dir, manifest, [order[1::2]], rank=1, world_size=2)
    return run_dir


def _checkpoints(run_dir):
    return sorted(run_dir.glob("checkpoints/rank_*/*.h5"))


def _parts(run_dir):
    """The parts in order, and their names without the merge's id."""
    parts = sorted((run_dir / PARTS_DIR).iterdir())
    return parts, [re.sub(r"^.*_part_", "part_", p.name) for p in parts]


def _per_token(run_dir, synthetic, layer=2):
    expected = synthetic.synthetic_batch(np.arange(NUM), 16)
    offsets = expected.outputs[f"layer_{layer}/per_token_offsets"]
    values = expected.outputs[f"layer_{layer}/per_token"]
    with open_embeddings(run_dir) as e:
        for row, name in enumerate(expected.ids):
            got = e.get(name, layer, "per_token")
            assert np.array_equal(got, values[offsets[row] : offsets[row + 1]]), name


def test_parts_are_the_checkpoints_and_outlive_them(run, synthetic):
    checkpoints = _checkpoints(run)
    merge_checkpoints(run)
    parts, names = _parts(run)
    assert names == ["part_00000.h5", "part_00001.h5", "part_00002.h5"]
    assert all(os.path.samefile(p, c) for p, c in zip(parts, checkpoints, strict=True))
    before = merged_in_input_order(run / "embeddings.h5")
    shutil.rmtree(run / "checkpoints")
    assert verify_output(run) is None
    after = merged_in_input_order(run / "embeddings.h5")
    assert sorted(after[0]) == sorted(before[0]) and after[1] == before[1]
    assert all(np.array_equal(after[0][n], v) for n, v in before[0].items())
    _per_token(run, synthetic)


def test_the_output_moves_with_its_folder(run, synthetic, tmp_path):
    merge_checkpoints(run)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    os.rename(run, moved)
    assert verify_output(moved) is None
    _per_token(moved, synthetic, layer=4)


def test_a_missing_part_is_named_and_the_file_refused(run):
    merge_checkpoints(run)
    missing = _parts(run)[0][1]
    missing.unlink()
    path = run / "embeddings.h5"
    said = (
        f"{path}: part {PARTS_DIR}/{missing.name} is missing (1 of 3); a per-token output"
        f" is embeddings.h5 with the folder {PARTS_DIR} beside it"
    )
    assert verify_output(run, full=False) == said
    with pytest.raises(EmbeddingsFileError) as caught:
        open_embeddings(run)
    assert str(caught.value) == said


def test_a_second_merge_replaces_the_parts_whole(run, write_rows, synthetic):
    merge_checkpoints(run)
    earlier = _parts(run)[0]
    earlier[2].unlink()
    (run / PARTS_DIR / "stray.h5").write_bytes(b"x")
    merge_checkpoints(run)
    parts, names = _parts(run)
    assert names == ["part_00000.h5", "part_00001.h5", "part_00002.h5"]
    assert not set(parts) & set(earlier)
    assert verify_output(run) is None
    _per_token(run, synthetic)


def test_an_interrupted_merges_folder_of_parts_is_a_stale_temporary(run):
    staging = run / f".{PARTS_DIR}.20261130T000000Z-0badc0de.tmp"
    staging.mkdir()
    os.link(_checkpoints(run)[0], staging / "part_00000.h5")
    assert remove_stale_temporaries(run) == [staging]
    assert not staging.exists() and len(_checkpoints(run)) == 3


def test_without_hard_links_the_parts_are_copies(run, synthetic, monkeypatch):
    def refuse(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    merge_checkpoints(run)
    parts = _parts(run)[0]
    assert not any(os.path.samefile(p, c) for p, c in zip(parts, _checkpoints(run), strict=True))
    shutil.rmtree(run / "checkpoints")
    assert verify_output(run) is None
    _per_token(run, synthetic)


def test_a_linked_output_is_read_through_the_link(run, synthetic, tmp_path):
    merge_checkpoints(run)
    link = tmp_path / "linked.h5"
    link.symlink_to(run / "embeddings.h5")
    assert verify_output(link) is None
    with open_embeddings(link) as e:
        assert len(e) == NUM


def test_a_file_without_its_parts_never_reads_another_runs(make_run, write_rows, tmp_path):
    """HDF5 also looks for a missing part in the working directory: another run's parts
    there must not be taken for this file's."""
    runs = []
    for name in ("a", "b"):
        run_dir, manifest = make_run(NUM, name=name)
        write_rows(run_dir, manifest, np.array_split(np.arange(NUM), 3))
        merge_checkpoints(run_dir)
        runs.append(run_dir)
    stray = tmp_path / "stray.h5"
    shutil.copyfile(runs[0] / "embeddings.h5", stray)
    cwd = os.getcwd()
    os.chdir(runs[1])
    try:
        with h5py.File(stray, "r") as f:
            assert np.isnan(f["layer_2/per_token"][()]).all()
    finally:
        os.chdir(cwd)


def test_outputs_written_before_parts_still_verify_and_read(run, synthetic):
    """Version 0.2 copied per-token values in input order, with offsets: such a file is
    still whole, not damaged (a resume would otherwise recompute a finished run)."""
    merge_checkpoints(run)
    path = run / "embeddings.h5"
    with h5py.File(path, "r+") as f:
        digests = json.loads(f.attrs["dataset_sha256"])
        for layer in (2, 4):
            name = f"layer_{layer}/per_token"
            spans, values = f[name + "_spans"][()], f[name][()]
            rows = np.concatenate([values[a:b] for a, b in spans.tolist()])
            offsets = np.concatenate([[0], np.cumsum(spans[:, 1] - spans[:, 0])])
            del f[name], f[name + "_spans"], digests[name + "_spans"]
            f.create_dataset(name, data=rows)
            f.create_dataset(name + "_offsets", data=offsets)
        del f.attrs["per_token_parts"]
        f.attrs["dataset_sha256"] = json.dumps(digests)
    shutil.rmtree(run / PARTS_DIR)
    assert verify_output(run) is None
    _per_token(run, synthetic, layer=4)


def test_parts_restore_the_checkpoints_they_were(run, synthetic):
    checkpoints = _checkpoints(run)
    merge_checkpoints(run)
    manifest = json.loads((run / "manifest.json").read_text())
    shutil.rmtree(run / "checkpoints")
    (run / PARTS_DIR / "not_a_part.h5").write_bytes(b"garbage")
    assert restore_checkpoints(run) == checkpoints
    found = resume_from_checkpoints(run, manifest)
    assert found.quarantined == [] and found.num_done == NUM
    assert restore_checkpoints(run) == []  # nothing is missing now
    (run / "embeddings.h5").unlink()
    merge_checkpoints(run)
    _per_token(run, synthetic)


def test_reports_count_the_rows_the_parts_restore(run):
    """With the output gone and its checkpoints removed, what resume would restore
    from the parts counts as done, in the inspection and in the scan a `run` reads;
    nothing is moved, and a damaged part counts as not done."""
    merge_checkpoints(run)
    manifest = json.loads((run / "manifest.json").read_text())
    shutil.rmtree(run / "checkpoints")
    (run / "embeddings.h5").unlink()
    report = inspect_run(run, verify=True)
    assert report["completed_sequences"] == NUM and report["state"] == "interrupted"
    assert {entry["rank"] for entry in report["checkpoints"]} == {0, 1}
    found = resume_from_checkpoints(run, manifest, quarantine=False, with_parts=True)
    assert found.num_done == NUM
    assert not (run / "checkpoints").exists()
    assert resume_from_checkpoints(run, manifest, quarantine=False).num_done == 0
    parts, _ = _parts(run)
    with h5py.File(parts[0], "r+") as f:
        damaged = int(f["indices"].shape[0])
        f["lengths"][0] += 1
    report = inspect_run(run, verify=True)
    assert report["completed_sequences"] == NUM - damaged
    rejected = [e for e in report["checkpoints"] if e["problem"] is not None]
    assert len(rejected) == 1 and rejected[0]["rank"] in (0, 1)
    assert sum(r["checkpoints"] for r in report["ranks"].values()) == len(parts)
    with pytest.raises(ValueError, match="quarantine must not move"):
        resume_from_checkpoints(run, manifest, quarantine=True, with_parts=True)
