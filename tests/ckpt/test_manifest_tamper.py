"""An edited manifest.json is recognised as an edit and refused, naming what differs."""

import json

import numpy as np
import pytest

from virnucpro.ckpt import (
    ManifestMismatchError,
    ManifestTamperedError,
    RunLock,
    check_manifest_integrity,
    merge_checkpoints,
    read_manifest,
    resume_from_checkpoints,
)
from virnucpro.ckpt.manifest import CHECKSUM_KEY, manifest_checksum


def _edit(run_dir, drop_checksum=False, **changes):
    path = run_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    if drop_checksum:
        del data[CHECKSUM_KEY]
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def started(make_run, write_rows):
    run_dir, manifest = make_run(30)
    write_rows(run_dir, manifest, [np.arange(0, 10), np.arange(10, 20)])
    return run_dir, manifest


def test_the_manifest_carries_its_own_checksum_and_reads_back_without_it(started):
    run_dir, manifest = started
    stored = json.loads((run_dir / "manifest.json").read_text())
    assert stored[CHECKSUM_KEY] == manifest_checksum(manifest)
    assert read_manifest(run_dir) == manifest == check_manifest_integrity(run_dir)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("seed", 8, "seed 8 (checkpoints: 7)"),
        ("layers", [4], "layers [4] (checkpoints: [2, 4])"),
        ("max_length", 0, "max_length 0 (checkpoints: 20)"),
        ("pooling", ["mean"], "pooling ['mean'] (checkpoints: ['mean', 'bos', 'per_token'])"),
        ("model", "esm2_t6_8M_UR50D", "model 'esm2_t6_8M_UR50D' (checkpoints: 'synthetic')"),
        ("embed_dim", 32, "embed_dim 32 (checkpoints: 16)"),
    ],
)
@pytest.mark.parametrize("drop_checksum", [False, True])
def test_an_edit_is_refused_naming_the_field_before_anything_moves(
    started, key, value, said, drop_checksum
):
    run_dir, manifest = started
    _edit(run_dir, drop_checksum, **{key: value})
    lock = RunLock(run_dir).acquire()
    before = sorted(run_dir.rglob("*"))
    with lock, pytest.raises(ManifestTamperedError) as caught:
        resume_from_checkpoints(run_dir, {**manifest, key: value})
    message = str(caught.value)
    assert said in message and "was edited after the run started" in message
    assert "\n" not in message
    assert isinstance(caught.value, ManifestMismatchError)
    assert sorted(run_dir.rglob("*")) == before
    assert not (run_dir / "quarantine").exists()
    if not drop_checksum:
        with pytest.raises(ManifestTamperedError, match=key):
            merge_checkpoints(run_dir)


def test_an_edit_the_checkpoints_do_not_record_is_still_refused(started):
    run_dir, _manifest = started
    _edit(run_dir, num_sequences=31)
    with pytest.raises(ManifestTamperedError, match="checksum does not match"):
        read_manifest(run_dir)


def test_an_older_manifest_without_checksum_stays_readable(started):
    run_dir, manifest = started
    _edit(run_dir, drop_checksum=True)
    assert read_manifest(run_dir) == manifest
    with RunLock(run_dir):
        result = resume_from_checkpoints(run_dir, manifest)
    assert result.num_done == 20 and result.quarantined == []


def test_with_an_intact_manifest_foreign_checkpoints_are_set_aside(make_run, write_rows):
    run_dir, manifest = make_run(30)
    write_rows(run_dir, {**manifest, "seed": 99}, [np.arange(0, 10)])
    with RunLock(run_dir):
        result = resume_from_checkpoints(run_dir, manifest)
    assert result.num_done == 0
    assert ["seed 99 differs" in q.reason for q in result.quarantined] == [True]
