"""The merged output begun while the run computes: the same file as a merge after it."""

import errno
import itertools
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    DiskFullError,
    MergeError,
    merge_checkpoints,
    read_manifest,
    verify_output,
)
from virnucpro.ckpt import assembly as assembly_module
from virnucpro.ckpt.assembly import OutputAssembly
from virnucpro.ckpt.stale import remove_stale_temporaries

from .conftest import WIDTH, merged_in_input_order

_names = itertools.count()


def _two_runs(make_run, write_rows, num, groups):
    """The same checkpoints in two run folders."""
    runs = []
    for _ in range(2):
        run_dir, manifest = make_run(num, name=f"run{next(_names)}")
        runs.append((run_dir, write_rows(run_dir, manifest, groups)))
    return runs


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(num=st.integers(1, 50), data=st.data())
def test_an_assembled_merge_writes_the_plain_merges_file(make_run, write_rows, num, data):
    """Whichever checkpoints were assembled before the merge, in any order, and even when
    another file wrote some of their rows after them, the datasets and their digests
    equal those of a merge with no assembly, whether the rows went through a mapping or
    were written call by call."""
    order = np.random.default_rng(num).permutation(num)
    cuts = sorted(data.draw(st.sets(st.integers(1, num - 1), max_size=5)) if num > 1 else [])
    groups = np.split(order, cuts)
    (plain, _), (assembled, paths) = _two_runs(make_run, write_rows, num, groups)
    assembly = OutputAssembly(assembled, read_manifest(assembled), mapped=data.draw(st.booleans()))
    chosen = data.draw(st.lists(st.sampled_from(paths), unique=True))
    for path in chosen:
        assembly.add(path)
    if data.draw(st.booleans()) and chosen:
        # A file holding rows of an assembled one is assembled after it (its values
        # scribbled over) and then set aside: the merge must write those rows again from
        # the file it takes them from.
        with h5py.File(chosen[0], "r") as f:
            rows = f["indices"][()]
        _run, manifest = make_run(num, name=f"unused{next(_names)}")
        (duplicate,) = write_rows(assembled, manifest, [rows], session="duplicate")
        assembly.add(duplicate)
        duplicate.unlink()
        for offset in assembly.offsets.values():
            written = np.memmap(assembly.path, np.float32, "r+", offset, (num, WIDTH))
            written[rows] = np.nan
            written.flush()
    expected = merged_in_input_order(merge_checkpoints(plain))
    got = merged_in_input_order(merge_checkpoints(assembled, assembly=assembly))
    assembly.discard()
    assert got[1] == expected[1]
    assert got[0].keys() == expected[0].keys()
    for name, values in expected[0].items():
        np.testing.assert_array_equal(got[0][name], values, err_msg=name)
    assert verify_output(assembled) is None
    assert not list(assembled.glob(".*.tmp"))


def test_the_thread_assembles_checkpoints_as_they_land(make_run, write_rows, monkeypatch):
    monkeypatch.setattr(assembly_module, "POLL_S", 0.02)
    run_dir, manifest = make_run(30)
    assembly = OutputAssembly.for_run(run_dir)
    assembly.start()
    paths = write_rows(run_dir, manifest, np.array_split(np.arange(30)[::-1], 3))
    deadline = time.monotonic() + 20
    while len(assembly.assembled) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(assembly.assembled) == sorted(paths) and assembly.error is None
    late = assembly.complete([(p, h5py.File(p, "r")["indices"][()]) for p in paths])
    assert late == 0  # nothing left to write after the last batch
    merge_checkpoints(run_dir, assembly=assembly)
    assert verify_output(run_dir) is None


def _pooled_only_run(make_run, synthetic, groups):
    """A run with pooled outputs only (no per-token values), its checkpoints written."""
    run_dir, manifest = make_run(sum(len(g) for g in groups), pooling=["mean", "bos"])
    paths = []
    with AsyncCheckpointWriter(run_dir, manifest, 0, 1, None) as writer:
        for group in groups:
            batch = synthetic.synthetic_batch(group, WIDTH)
            batch.outputs = {k: v for k, v in batch.outputs.items() if "per_token" not in k}
            paths.append(writer.write_checkpoint_async(batch, "test"))
    return run_dir, paths


def _damage(path: Path) -> None:
    with h5py.File(path, "r") as f:
        offset = f["layer_2/mean"].id.get_offset()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 8)


def test_a_damaged_checkpoint_is_left_to_the_merge_to_name(make_run, synthetic):
    run_dir, (good, bad) = _pooled_only_run(make_run, synthetic, [np.arange(10), np.arange(10, 20)])
    _damage(bad)
    assembly = OutputAssembly.for_run(run_dir)
    assembly.add(good)
    assembly.add(bad)
    assert list(assembly.assembled) == [good] and list(assembly.rejected) == [bad]
    with pytest.raises(MergeError, match=bad.name):
        merge_checkpoints(run_dir, assembly=assembly)
    assembly.discard()
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "embeddings.h5").exists()


def test_a_per_token_runs_checkpoints_are_not_hashed_twice(make_run, write_rows):
    """The output's check hashes a per-token run's checkpoints, so the assembly does not
    read them whole first; nor does it vouch for them: a merge asked to check them still
    names a damaged one."""
    run_dir, manifest = make_run(20)
    good, bad = write_rows(run_dir, manifest, [np.arange(10), np.arange(10, 20)])
    _damage(bad)
    assembly = OutputAssembly.for_run(run_dir)
    assembly.add(good)
    assembly.add(bad)
    assert sorted(assembly.assembled) == sorted([good, bad]) and not assembly.rejected
    assert not assembly.verified(bad)
    with pytest.raises(MergeError, match=bad.name):
        merge_checkpoints(run_dir, assembly=assembly)
    assembly.discard()


@pytest.mark.parametrize("mapped", [True, False])
def test_rows_a_failed_write_reached_are_written_again_by_the_merge(
    make_run, write_rows, monkeypatch, mapped
):
    """A read error halfway through a file (its first dataset placed, not the rest)
    leaves its rows claimed by nobody, so the merge writes them from the file it takes."""
    run_dir, manifest = make_run(20)
    (first,) = write_rows(run_dir, manifest, [np.arange(20)])
    plain_dir, plain_manifest = make_run(20, name="plain")
    write_rows(plain_dir, plain_manifest, [np.arange(20)])
    assembly = OutputAssembly(run_dir, manifest, mapped=mapped)
    assembly.add(first)
    (duplicate,) = write_rows(run_dir, manifest, [np.arange(20)], session="duplicate")
    with h5py.File(duplicate, "r+") as f:
        for name in assembly.names:
            f[name][...] = np.nan  # what it places must not survive
    reads = iter(range(10**6))
    real_read = assembly_module.read_range

    def fails_after_the_first_dataset(raw, offset, size):
        if next(reads) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(raw, offset, size)

    monkeypatch.setattr(assembly_module, "read_range", fails_after_the_first_dataset)
    with pytest.raises(OSError, match="Input/output"):
        assembly.add(duplicate, check=False)
    monkeypatch.undo()
    duplicate.unlink()  # set aside, as the engine's scan does with a duplicate
    got = merged_in_input_order(merge_checkpoints(run_dir, assembly=assembly))
    expected = merged_in_input_order(merge_checkpoints(plain_dir))
    assembly.discard()
    for name, values in expected[0].items():
        np.testing.assert_array_equal(got[0][name], values, err_msg=name)
    assert verify_output(run_dir) is None


def test_the_outputs_blocks_are_reserved_when_the_assembly_begins(make_run):
    """Written through a mapping, the rows must never need a block the disk no longer
    has (that would kill the process): every block is allocated up front."""
    run_dir, _manifest = make_run(300)
    assembly = OutputAssembly.for_run(run_dir)
    needed = len(assembly.names) * 300 * assembly.row_bytes
    assert assembly.path.stat().st_blocks * 512 >= needed
    assembly.discard()


def test_a_filesystem_that_cannot_reserve_the_output_writes_call_by_call(make_run, monkeypatch):
    """fallocate refused: the rows are written call by call (an error there is an
    error, not a signal)."""
    run_dir, _manifest = make_run(10)

    def refuses(fd, offset, size):
        raise assembly_module.UnreservableError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(assembly_module, "_reserve", refuses)
    assembly = OutputAssembly.for_run(run_dir)
    assert assembly is not None and not assembly.mapped
    assembly.discard()


def test_a_full_disk_at_the_start_is_said_and_leaves_no_file(make_run, monkeypatch):
    run_dir, _manifest = make_run(10)

    def full(fd, offset, size):
        raise assembly_module.UnreservableError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(assembly_module, "_reserve", full)
    with pytest.raises(DiskFullError):
        OutputAssembly.for_run(run_dir)
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["nfs4", "lustre", "btrfs", "zfs", "overlay", None])
def test_only_filesystems_that_write_in_place_are_written_through_a_mapping(
    make_run, write_rows, monkeypatch, kind
):
    """A copy-on-write filesystem needs new space for every write and a network one a
    server for every page: either failing inside a mapping would kill the process, so
    there (and where the type is not known) rows are written call by call."""
    run_dir, manifest = make_run(10)
    assert assembly_module.filesystem_type(run_dir) in assembly_module.MAPPABLE_FILESYSTEMS
    local = OutputAssembly.for_run(run_dir)
    assert local.mapped
    local.discard()
    monkeypatch.setattr(assembly_module, "filesystem_type", lambda path: kind)
    assembly = OutputAssembly.for_run(run_dir)

    def no_mapping(*args, **kwargs):
        raise AssertionError("a mapping of the output on a filesystem that cannot take one")

    monkeypatch.setattr(assembly_module.mmap, "mmap", no_mapping)
    (path,) = write_rows(run_dir, manifest, [np.arange(10)])
    assembly.add(path)
    assert path in assembly.assembled and not assembly.mapped
    assembly.discard()


def test_an_error_inside_the_mapping_surfaces_as_itself(tmp_path):
    """The view of the mapping ends with the write, even when the write fails, so the
    mapping closes and the error is the write's own."""
    path = tmp_path / "file"
    path.write_bytes(bytes(mmap.ALLOCATIONGRANULARITY))
    with pytest.raises(IndexError), open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        assembly_module._scatter(mapped, 0, 4, np.array([9]), np.ones((1, 8), np.uint8))


def test_a_live_assembly_is_kept_by_the_stale_scan_and_a_killed_ones_file_removed(
    make_run, child_env
):
    """The engine scans for stale temporaries after a node's workers finish, while its
    own assembly is live; a process killed mid-run leaves its file to the next start."""
    run_dir, _manifest = make_run(10)
    live = OutputAssembly.for_run(run_dir)
    assert remove_stale_temporaries(run_dir) == [] and live.path.is_file()
    live.discard()
    child = subprocess.Popen(
        [sys.executable, "-c", ASSEMBLE_AND_WAIT, str(run_dir)],
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    left = Path(child.stdout.readline().strip())
    assert left.is_file() and remove_stale_temporaries(run_dir) == []
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert remove_stale_temporaries(run_dir) == [left]


ASSEMBLE_AND_WAIT = """
import sys, time
from pathlib import Path
from virnucpro.ckpt import OutputAssembly
assembly = OutputAssembly.for_run(Path(sys.argv[1]))
print(assembly.path, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    "changes", [{"compression": "gzip"}, {"pooling": ["per_token"]}, {"num_sequences": 0}]
)
def test_nothing_is_assembled_where_rows_cannot_be_written_in_place(make_run, changes):
    run_dir, _manifest = make_run(10, **changes)
    assert OutputAssembly.for_run(run_dir) is None
