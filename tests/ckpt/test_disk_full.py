"""A full disk during a checkpoint write, the merge or the manifest: one line, no crash,
no temporary file, nothing checkpointed lost, and after freeing space the same result.

Real small filesystems (tmpfs, mounted here when permitted) and a stub that raises
ENOSPC at a random write call (hypothesis).
"""

import contextlib
import errno
import subprocess
import sys
import textwrap
import uuid

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    DiskFullError,
    check_run_space,
    merge_checkpoints,
    resume_from_checkpoints,
    validate_checkpoint_hdf5,
    write_manifest,
)
from virnucpro.ckpt.checkpoint_file import write_checkpoint_file
from virnucpro.ckpt.layout import PARTS_DIR, checkpoint_path

from .conftest import merged_in_input_order

WIDTH = 16
NUM = 600
MIB = 2**20


def _mount(where, size):
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _resize(where, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


@pytest.fixture
def small_fs(request, tmp_path):
    """A tmpfs (2 MiB unless parametrized), unmounted afterwards; skipped where mounting
    is not permitted."""
    where = tmp_path / "fs"
    _mount(where, getattr(request, "param", 2 * MIB))
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _leftovers(run_dir):
    return sorted(p.name for p in run_dir.rglob("*.tmp"))


def _assert_merged(path, synthetic, num):
    expected = synthetic.synthetic_batch(np.arange(num), WIDTH)
    data, _attrs = merged_in_input_order(path)
    assert [i.decode() for i in data["ids"]] == expected.ids
    assert np.array_equal(data["lengths"], expected.lengths)
    for name, value in expected.outputs.items():
        assert np.array_equal(data[name], value), name


def _run_on(root, synthetic, groups, num=NUM):
    """Checkpoints of a run that compresses its output, so that its merge copies the
    per-token values (an uncompressed one links them and writes little)."""
    run_dir = root / "run"
    manifest = {**synthetic.manifest_for(num, WIDTH), "compression": "lzf"}
    write_manifest(run_dir, manifest)
    with AsyncCheckpointWriter(run_dir, manifest) as writer:
        for group in groups:
            writer.write_checkpoint_async(synthetic.synthetic_batch(group, WIDTH), "test")
    return run_dir, manifest


def _checkpoints_intact(run_dir, manifest):
    files = sorted(run_dir.glob("checkpoints/rank_*/*.h5"))
    for path in files:
        validate_checkpoint_hdf5(path, manifest)
    return files


def test_merge_on_a_full_disk_says_so_and_succeeds_after_freeing_space(small_fs, synthetic):
    run_dir, manifest = _run_on(small_fs, synthetic, np.array_split(np.arange(NUM), 4))
    files = _checkpoints_intact(run_dir, manifest)
    with pytest.raises(DiskFullError) as caught:
        merge_checkpoints(run_dir)
    message = str(caught.value)
    assert message.startswith(f"disk full: cannot write {run_dir / 'embeddings.h5'} (needs about")
    assert "B free); free space there and run resume" in message and "\n" not in message
    assert caught.value.needed_bytes > 1_000_000
    assert _leftovers(run_dir) == [] and not (run_dir / "embeddings.h5").exists()
    assert _checkpoints_intact(run_dir, manifest) == files
    _resize(small_fs, 8 * MIB)
    _assert_merged(merge_checkpoints(run_dir), synthetic, NUM)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from virnucpro.ckpt import DiskFullError, merge_checkpoints, safe_write
    from virnucpro.ckpt.checkpoint_file import write_checkpoint_file
    from virnucpro.ckpt.layout import checkpoint_path

    safe_write.free_bytes = lambda directory: 10**15  # pass the check, fill the disk
    run_dir, what = Path(sys.argv[1]), sys.argv[2]
    try:
        if what == "merge":
            merge_checkpoints(run_dir)
        else:
            import importlib.util
            spec = importlib.util.spec_from_file_location("s", sys.argv[3])
            syn = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(syn)
            manifest = syn.manifest_for(10**6, 16)
            attrs = {**manifest, "rank": 0, "world_size": 1, "session": "big",
                     "sequence": 0, "trigger_reason": "t", "created_at": "", "written_at": "",
                     "gpu_memory_allocated_bytes": 0, "gpu_memory_peak_bytes": 0}
            path = checkpoint_path(run_dir, 0, "big", 0)
            write_checkpoint_file(path, syn.synthetic_batch(np.arange(3000), 16), attrs)
    except DiskFullError as exc:
        print(exc)
        sys.exit(3)
    """
)


@pytest.mark.parametrize(
    ("what", "small_fs"),
    # A merge that fits in 2 MiB (it writes the pooled values and compressed parts) cannot
    # meet a full disk there.
    [("merge", 1_400_000), ("merge", 1_700_000)]
    + [("checkpoint", size) for size in (1_400_000, 1_700_000, 2 * MIB)],
    indirect=["small_fs"],
)
def test_hdf5_running_out_of_space_mid_write_does_not_crash(small_fs, synthetic, child_env, what):
    """The check before writing is bypassed, so HDF5 itself meets ENOSPC (the old segfault)."""
    run_dir, manifest = _run_on(small_fs, synthetic, np.array_split(np.arange(NUM), 3))
    files = _checkpoints_intact(run_dir, manifest)
    script = small_fs.parent / "child.py"
    script.write_text(CHILD)
    done = subprocess.run(
        [sys.executable, str(script), str(run_dir), what, str(synthetic.__file__)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("disk full: cannot write ") and done.stderr == ""
    assert _leftovers(run_dir) == []
    assert _checkpoints_intact(run_dir, manifest) == files
    _resize(small_fs, 8 * MIB)
    _assert_merged(merge_checkpoints(run_dir), synthetic, NUM)


def test_checkpoint_writes_on_a_full_disk_keep_what_was_written(small_fs, synthetic):
    run_dir = small_fs / "run"
    manifest = synthetic.manifest_for(NUM * 2, WIDTH)
    write_manifest(run_dir, manifest)
    groups = np.array_split(np.arange(NUM * 2), 8)
    writer = AsyncCheckpointWriter(run_dir, manifest)
    with pytest.raises(DiskFullError) as caught:
        for group in groups:
            writer.write_checkpoint_async(synthetic.synthetic_batch(group, WIDTH), "t")
        writer.wait_all()
    with contextlib.suppress(DiskFullError):
        writer.shutdown()
    assert str(caught.value).startswith("disk full: cannot write ")
    assert "computed again on resume" in str(caught.value)
    assert _leftovers(run_dir) == []
    files = _checkpoints_intact(run_dir, manifest)
    assert 0 < len(files) < 8
    done = resume_from_checkpoints(run_dir, manifest, quarantine=False)
    assert done.quarantined == []
    assert np.array_equal(done.done_indices, np.concatenate(groups[: len(files)]))


def test_a_manifest_on_a_full_disk_says_so(small_fs, synthetic):
    filler = small_fs / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        f.write(b"\0" * 3 * MIB)
    with pytest.raises(DiskFullError, match=r"^disk full: cannot write .*manifest\.json"):
        write_manifest(small_fs / "run", synthetic.manifest_for(10, WIDTH))
    assert _leftovers(small_fs) == []


class _Stub:
    """Raise ENOSPC at the ``fail_at``-th call of any h5py write or fsync."""

    def __init__(self, monkeypatch, fail_at):
        self.calls = 0
        self.fail_at = fail_at
        targets = [
            (h5py.Dataset, "__setitem__"),
            (h5py.Group, "create_dataset"),
            (h5py.AttributeManager, "__setitem__"),
        ]
        for owner, name in targets:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))
        monkeypatch.setattr("virnucpro.ckpt.fsio.os.fsync", self._wrap(__import__("os").fsync))

    def _wrap(self, original):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)

        return call


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fail_at=st.integers(1, 80), compression=st.sampled_from(["none", "lzf"]))
def test_enospc_at_any_write_of_the_merge(make_run, write_rows, synthetic, fail_at, compression):
    run_dir, manifest = make_run(40, name=f"run-{uuid.uuid4().hex}", compression=compression)
    write_rows(run_dir, manifest, np.array_split(np.random.default_rng(0).permutation(40), 3))
    files = _checkpoints_intact(run_dir, manifest)
    with pytest.MonkeyPatch.context() as monkeypatch:
        stub = _Stub(monkeypatch, fail_at)
        try:
            merge_checkpoints(run_dir, memory_budget_bytes=2000)
            failed = False
        except DiskFullError as exc:
            failed = True
            written = (run_dir / "embeddings.h5", run_dir / PARTS_DIR)
            assert str(exc).startswith(tuple(f"disk full: cannot write {w}" for w in written))
    assert failed == (fail_at <= stub.calls)
    assert _leftovers(run_dir) == []
    assert (run_dir / "embeddings.h5").exists() is not failed
    assert _checkpoints_intact(run_dir, manifest) == files
    _assert_merged(merge_checkpoints(run_dir), synthetic, 40)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fail_at=st.integers(1, 25))
def test_enospc_at_any_write_of_a_checkpoint(make_run, synthetic, fail_at):
    run_dir, manifest = make_run(40, name=f"run-{uuid.uuid4().hex}")
    attrs = {
        **manifest,
        **dict(rank=0, world_size=1, session="s", sequence=0, trigger_reason="t"),
        **dict(created_at="", written_at="", gpu_memory_allocated_bytes=0),
        "gpu_memory_peak_bytes": 0,
    }
    path = checkpoint_path(run_dir, 0, "s", 0)
    path.parent.mkdir(parents=True)
    batch = synthetic.synthetic_batch(np.arange(10), WIDTH)
    with pytest.MonkeyPatch.context() as monkeypatch:
        stub = _Stub(monkeypatch, fail_at)
        try:
            write_checkpoint_file(path, batch, attrs)
            failed = False
        except DiskFullError:
            failed = True
    assert failed == (fail_at <= stub.calls)
    assert _leftovers(run_dir) == []
    assert path.exists() is not failed
    if not failed:
        validate_checkpoint_hdf5(path, manifest)


@pytest.mark.parametrize("small_fs", [16 * MIB], indirect=True)
def test_a_compressed_merge_fits_the_space_the_run_asked_for(small_fs, synthetic):
    """Its parts are copies: their space is asked for once, before they are written."""
    manifest = {**synthetic.manifest_for(NUM, WIDTH), "compression": "lzf"}
    needed = check_run_space(small_fs, manifest, synthetic.lengths_of(np.arange(NUM)))
    _resize(small_fs, needed + 256 * 1024)
    run_dir, _ = _run_on(small_fs, synthetic, np.array_split(np.arange(NUM), 4))
    _assert_merged(merge_checkpoints(run_dir), synthetic, NUM)
