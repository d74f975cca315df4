"""The merged output carries per-dataset sha256 digests; damage is found and named."""

import hashlib
import itertools
import json
import re
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import inspect_run, merge_checkpoints, verify, verify_output
from virnucpro.ckpt.layout import PARTS_DIR
from virnucpro.ckpt.parts import PARTS_ATTR
from virnucpro.ckpt.verify import CHECKSUMS_ATTR, DatasetDigests

NUM = 40


@pytest.fixture
def merged(make_run, write_rows):
    run_dir, manifest = make_run(NUM)
    order = np.random.default_rng(3).permutation(NUM)
    write_rows(run_dir, manifest, np.array_split(order, 3))
    return run_dir, merge_checkpoints(run_dir)


def _flip(path, offset, count=8):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _data_regions(path, names=None):
    """(file, name, file offset, bytes) of every dataset's contiguous data (of ``names``
    only, if given), aliases once."""
    regions = []
    with h5py.File(path, "r") as f:
        for name in sorted(names or json.loads(f.attrs[CHECKSUMS_ATTR])):
            ds = f[name]
            offset = ds.id.get_offset()
            if offset is not None and ds.id.get_storage_size() >= 8:
                regions.append((path.name, name, offset, ds.id.get_storage_size()))
    return regions


def test_an_intact_output_verifies_and_records_every_dataset(merged):
    run_dir, path = merged
    assert verify_output(run_dir) is None
    assert verify_output(path) is None
    assert verify_output(run_dir, full=False) is None
    with h5py.File(path, "r") as f:
        recorded = json.loads(f.attrs[CHECKSUMS_ATTR])
        parts = json.loads(f.attrs[PARTS_ATTR])
        names = []
        f.visit_links(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        mapped = sorted(n for n in names if f[n].is_virtual)
    # Per-token values are the parts' (one per checkpoint), checked by their own checksums.
    assert mapped == ["layer_2/per_token", "layer_4/per_token"]
    assert sorted(recorded) == sorted(n for n in names if n != "embeddings" and n not in mapped)
    assert [re.sub(r"/.*_part_", "/part_", p) for p in parts] == [
        f"{PARTS_DIR}/part_{n:05d}.h5" for n in range(3)
    ]
    assert all((run_dir / p).is_file() for p in parts)
    report = inspect_run(run_dir, verify=True)
    assert report["state"] == "complete"
    assert report["output"] == {"path": str(path), "present": True, "problem": None}


def test_flipped_bytes_in_a_dataset_are_named(merged):
    run_dir, path = merged
    with h5py.File(path, "r") as f:
        offset = f["layer_4/mean"].id.get_offset()
    _flip(path, offset + 100)
    problem = verify_output(run_dir)
    assert problem == f"{path}: layer_4/mean is damaged (its sha256 differs from the recorded one)"
    assert verify_output(run_dir, full=False) is None  # the quick check reads no data
    report = inspect_run(run_dir, verify=True)
    assert report["state"] == "interrupted" and report["output"]["problem"] == problem
    assert inspect_run(run_dir)["state"] == "complete"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_eight_flipped_bytes_anywhere_in_the_data_are_found(merged, tmp_path, data):
    run_dir, path = merged
    copy = tmp_path / "copy.h5"
    shutil.copyfile(path, copy)
    if not (tmp_path / PARTS_DIR).exists():
        shutil.copytree(run_dir / PARTS_DIR, tmp_path / PARTS_DIR)
    parts = sorted((tmp_path / PARTS_DIR).iterdir())
    regions = _data_regions(copy) + [
        region
        for part in parts
        for region in _data_regions(part, ["ids", "layer_2/per_token", "layer_4/per_token"])
    ]
    file, name, offset, size = data.draw(st.sampled_from(regions))
    at = data.draw(st.integers(0, size - 8))
    damaged = copy if file == copy.name else tmp_path / PARTS_DIR / file
    _flip(damaged, offset + at)
    try:
        problem = verify_output(copy)
    finally:
        _flip(damaged, offset + at)  # the next example starts from intact files
    assert problem is not None and problem.startswith(f"{copy}: ") and "\n" not in problem
    if damaged != copy:
        assert problem.startswith(f"{copy}: part {PARTS_DIR}/{file} is ")
        assert "damaged (its data checksum differs)" in problem or "unreadable" in problem
    else:
        # The damaged dataset is named, or one whose shape it sets (spans), or the file.
        assert name.split("_spans")[0] in problem or "unreadable" in problem or "damaged" in problem


@pytest.mark.parametrize("keep", [1000, "all but 16"])
def test_a_truncated_output_is_unreadable(merged, keep):
    run_dir, path = merged
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(keep if isinstance(keep, int) else size - 16)
    problem = verify_output(run_dir, full=False)
    assert problem is not None and problem.startswith(f"{path}: unreadable (")
    assert "\n" not in problem and len(problem) < len(str(path)) + 240
    assert inspect_run(run_dir)["state"] == "interrupted"


def test_a_missing_output_and_one_from_another_run_are_named(merged):
    run_dir, path = merged
    with h5py.File(path, "r+") as f:
        f.attrs["seed"] = json.dumps(8)
    assert verify_output(run_dir) == f"{path}: seed 8 differs from the run's 7"
    path.unlink()
    assert verify_output(run_dir) == f"{path}: missing"


def test_a_missing_dataset_is_named(merged):
    run_dir, path = merged
    with h5py.File(path, "r+") as f:
        del f["layer_2/bos"]
    assert "datasets missing ['layer_2/bos']" in verify_output(run_dir, full=False)


def test_an_output_without_digests_is_checked_for_structure_only(merged):
    run_dir, path = merged
    with h5py.File(path, "r+") as f:
        del f.attrs[CHECKSUMS_ATTR]
    assert verify_output(run_dir) is None
    with h5py.File(path, "r+") as f:
        del f["truncated"]
        f.create_dataset("truncated", data=np.zeros(NUM - 1, dtype=bool))
    assert verify_output(run_dir) == f"{path}: truncated has shape ({NUM - 1},), expected ({NUM},)"


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    pending=st.sampled_from([0, 1, 700, 10**6]),
)
def test_digests_do_not_depend_on_slicing_or_the_hashing_thread(rows, cuts, pending):
    rng = np.random.default_rng(rows)
    values = rng.standard_normal((rows, 3)).astype(np.float32)
    ids = [f"id{i}_é" * (i % 3) for i in range(rows)]
    whole = DatasetDigests()
    whole.start("x", values.dtype, values.shape)
    whole.start("ids", None, (rows,))
    whole.update("x", values)
    whole.update_ids(ids)
    sliced = DatasetDigests(max_pending_bytes=pending)
    sliced.start("x", values.dtype, values.shape)
    sliced.start("ids", None, (rows,))
    bounds = [0, *sorted(c for c in cuts if c <= rows), rows]
    for lo, hi in itertools.pairwise(bounds):
        sliced.update("x", values[lo:hi].copy())
        sliced.update_ids(ids[lo:hi])
    assert sliced.hexdigests() == whole.hexdigests()
    changed = values.copy()
    if rows:
        changed[rows // 2, 1] = np.nextafter(changed[rows // 2, 1], np.float32(np.inf))
        other = DatasetDigests()
        other.start("x", values.dtype, values.shape)
        other.update("x", changed)
        assert other.hexdigests()["x"] != whole.hexdigests()["x"]


def _blocks_digest(name, values, block_bytes):
    """The block digest by its definition, written out independently of DatasetDigests."""
    data = np.ascontiguousarray(values).tobytes()
    root = hashlib.sha256(f"{name}|{values.dtype.str}|{tuple(values.shape)}|".encode())
    for start in range(0, len(data), block_bytes):
        root.update(hashlib.sha256(data[start : start + block_bytes]).digest())
    return f"sha256-blocks:{block_bytes}:{root.hexdigest()}"


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    block_bytes=st.sampled_from([1, 7, 12, 48, 10**6]),
    pending=st.sampled_from([0, 1, 50, 10**6]),
)
def test_block_digests_follow_their_definition_however_fed(rows, cuts, block_bytes, pending):
    values = np.random.default_rng(rows).standard_normal((rows, 3)).astype(np.float32)
    digests = DatasetDigests(max_pending_bytes=pending, block_bytes=block_bytes)
    digests.start("x", values.dtype, values.shape)
    bounds = [0, *sorted(c for c in cuts if c <= rows), rows]
    for lo, hi in itertools.pairwise(bounds):
        digests.update("x", values[lo:hi].copy())
    assert digests.hexdigests()["x"] == _blocks_digest("x", values, block_bytes)


@pytest.fixture
def small_blocks(monkeypatch):
    """Outputs merged with 256-byte blocks, so the test data spans many of them."""
    monkeypatch.setattr(verify, "BLOCK_BYTES", 256)


def test_many_blocks_are_checked_in_parallel_and_a_flip_in_any_is_named(
    small_blocks, make_run, write_rows
):
    run_dir, manifest = make_run(NUM)
    write_rows(run_dir, manifest, np.array_split(np.random.default_rng(5).permutation(NUM), 3))
    path = merge_checkpoints(run_dir)
    with h5py.File(path, "r") as f:
        recorded = json.loads(f.attrs[CHECKSUMS_ATTR])
        values = f["layer_2/mean"][()]
        offset = f["layer_2/mean"].id.get_offset()
    assert recorded["layer_2/mean"] == _blocks_digest("layer_2/mean", values, 256)
    assert values.nbytes > 4 * 256 and recorded["ids"].isalnum()  # ids: one stream
    assert verify_output(run_dir) is None
    for at in (0, 256 * 3 + 5, values.nbytes - 8):
        _flip(path, offset + at)
        assert verify_output(run_dir) == (
            f"{path}: layer_2/mean is damaged (its sha256 differs from the recorded one)"
        )
        _flip(path, offset + at)
    assert verify_output(run_dir) is None


def test_outputs_with_single_stream_digests_still_check(merged):
    """Outputs written before block digests (virnucpro-ckpt 0.3) recorded one sha256 stream
    per dataset; they verify, and damage in them is still found."""
    run_dir, path = merged
    with h5py.File(path, "r+") as f:
        old = DatasetDigests(block_bytes=0)
        for name in json.loads(f.attrs[CHECKSUMS_ATTR]):
            old.start(name, f[name].dtype, f[name].shape)
            if name == "ids":
                old.update_ids(f[name].asstr()[()].tolist())
            else:
                old.update(name, f[name][()])
        streams = old.hexdigests()
        f.attrs[CHECKSUMS_ATTR] = json.dumps(streams)
        offset = f["truncated"].id.get_offset()
    assert all(len(digest) == 64 for digest in streams.values())
    assert verify_output(run_dir) is None
    _flip(path, offset, 1)
    assert verify_output(run_dir) == (
        f"{path}: truncated is damaged (its sha256 differs from the recorded one)"
    )
