import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.ckpt import InvalidCheckpointError, validate_checkpoint_hdf5

WIDTH = 16


@pytest.fixture
def one_file(make_run, write_rows):
    run_dir, manifest = make_run(50)
    (path,) = write_rows(run_dir, manifest, [np.array([9, 3, 7, 1])], rank=1, world_size=2)
    return run_dir, manifest, path


def test_round_trip_rows_sorted_with_metadata(one_file, synthetic):
    _run_dir, manifest, path = one_file
    info = validate_checkpoint_hdf5(path, manifest)
    assert (info.rank, info.num_sequences) == (1, 4)
    expected = synthetic.synthetic_batch(np.array([1, 3, 7, 9]), WIDTH)
    with h5py.File(path, "r") as f:
        assert f["indices"][()].tolist() == [1, 3, 7, 9]
        assert f["ids"].asstr()[()].tolist() == expected.ids
        assert np.array_equal(f["lengths"][()], expected.lengths)
        assert np.array_equal(f["truncated"][()], expected.truncated)
        for name, value in expected.outputs.items():
            assert np.array_equal(f[name][()], value), name
        attrs = {k: json.loads(v) for k, v in f.attrs.items()}
    assert attrs["world_size"] == 2
    assert attrs["trigger_reason"] == "test"
    assert attrs["layers"] == manifest["layers"]
    assert attrs["input_fingerprint"] == manifest["input_fingerprint"]
    assert attrs["versions"] == manifest["versions"]
    for key in ("created_at", "written_at", "data_checksum", "seed", "precision"):
        assert attrs[key] is not None
    assert list(path.parent.glob("*.tmp")) == []


def test_nothing_is_pickled(one_file):
    _run_dir, _manifest, path = one_file
    with h5py.File(path, "r") as f:
        assert all(isinstance(v, str) for v in f.attrs.values())

        def no_opaque(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "iufb" or h5py.check_string_dtype(obj.dtype), name

        f.visititems(no_opaque)
    sources = Path(__file__).parents[2] / "packages/virnucpro-ckpt/src/virnucpro/ckpt"
    for source in sources.glob("*.py"):
        text = source.read_text()
        assert not re.search(r"import (c?pickle|torch|dill)|pickle\.|allow_pickle=True", text)


def _reason(path, manifest=None):
    with pytest.raises(InvalidCheckpointError) as caught:
        validate_checkpoint_hdf5(path, manifest)
    return str(caught.value)


def _data_offset(path, name):
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


def test_flipped_data_byte_fails_the_checksum(one_file):
    _run_dir, manifest, path = one_file
    offset = _data_offset(path, "layer_4/mean")
    with open(path, "r+b") as f:
        f.seek(offset + 5)
        byte = f.read(1)
        f.seek(offset + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "checksum" in _reason(path, manifest)
    assert validate_checkpoint_hdf5(path, manifest, verify_checksum=False).num_sequences == 4


@pytest.mark.parametrize("keep", [0, 100, 0.5, 0.9])
def test_truncated_file_is_invalid(one_file, keep):
    _run_dir, manifest, path = one_file
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep) if isinstance(keep, float) else keep)
    assert str(path) in _reason(path, manifest)


def test_other_model_is_refused(one_file):
    _run_dir, manifest, path = one_file
    assert "model 'synthetic' differs from the run's 'other'" in _reason(
        path, {**manifest, "model": "other"}
    )


def test_file_moved_to_another_rank_is_refused(one_file):
    run_dir, manifest, path = one_file
    moved = run_dir / "checkpoints" / "rank_0" / path.name
    moved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, moved)
    assert "header says rank/session/seq" in _reason(moved, manifest)


def test_bad_name_is_refused(one_file):
    _run_dir, manifest, path = one_file
    renamed = path.with_name("something.h5")
    path.rename(renamed)
    assert "not a checkpoint name" in _reason(renamed, manifest)


def _edit(path, action):
    with h5py.File(path, "r+") as f:
        action(f)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda f: f.__delitem__("layer_2/bos"), "outputs"),
        (lambda f: f.__delitem__("lengths"), "lengths does not have 4 rows"),
        (lambda f: f["indices"].__setitem__(1, 9), "not strictly increasing"),
        (lambda f: f["indices"].__setitem__(3, 50), "beyond 50 inputs"),
        (lambda f: f["layer_2/per_token_offsets"].__setitem__(2, 1), "steps differ"),
        (lambda f: f.attrs.__delitem__("rank"), "header lacks rank"),
        (lambda f: f.attrs.__setitem__("num_sequences", "5"), "does not have 5 rows"),
        (lambda f: f.attrs.__setitem__("format_version", "99"), "format version 99"),
    ],
)
def test_structural_defects_are_named(one_file, action, message):
    _run_dir, manifest, path = one_file
    _edit(path, action)
    assert message in _reason(path, manifest)


def test_wrong_width_is_named(one_file):
    _run_dir, manifest, path = one_file

    def widen(f):
        del f["layer_4/mean"]
        f.create_dataset("layer_4/mean", data=np.zeros((4, WIDTH + 1), np.float32))

    _edit(path, widen)
    assert "layer_4/mean is float32 (4, 17), expected float32 (4, 16)" in _reason(path, manifest)
