"""The merged output begun while the run computes: the same file as a merge after it."""

import itertools
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

from virnucpro.ckpt import MergeError, merge_checkpoints, verify_output
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
    equal those of a merge with no assembly."""
    order = np.random.default_rng(num).permutation(num)
    cuts = sorted(data.draw(st.sets(st.integers(1, num - 1), max_size=5)) if num > 1 else [])
    groups = np.split(order, cuts)
    (plain, _), (assembled, paths) = _two_runs(make_run, write_rows, num, groups)
    assembly = OutputAssembly.for_run(assembled)
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


def test_a_damaged_checkpoint_is_left_to_the_merge_to_name(make_run, write_rows):
    run_dir, manifest = make_run(20)
    good, bad = write_rows(run_dir, manifest, [np.arange(10), np.arange(10, 20)])
    with h5py.File(bad, "r") as f:
        offset = f["layer_2/mean"].id.get_offset()
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 8)
    assembly = OutputAssembly.for_run(run_dir)
    assembly.add(good)
    assembly.add(bad)
    assert list(assembly.assembled) == [good] and list(assembly.rejected) == [bad]
    with pytest.raises(MergeError, match=bad.name):
        merge_checkpoints(run_dir, assembly=assembly)
    assembly.discard()
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "embeddings.h5").exists()


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
