"""open_embeddings on files written by the real writer and merge."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    CheckpointError,
    Embeddings,
    EmbeddingsFileError,
    EmbeddingsKeyError,
    merge_checkpoints,
    open_embeddings,
    read_manifest,
    write_manifest,
)

WIDTH = 16


def _merge(run_dir, synthetic, num, groups_by_rank, ids=None):
    """Write each rank's index groups through the real writer, merge, return the expected rows."""
    manifest = synthetic.manifest_for(num, WIDTH)
    write_manifest(run_dir, manifest)
    expected = synthetic.synthetic_batch(np.arange(num), WIDTH)
    if ids is not None:
        expected = dataclasses.replace(expected, ids=list(ids))
    for rank, groups in enumerate(groups_by_rank):
        with AsyncCheckpointWriter(run_dir, manifest, rank, len(groups_by_rank)) as writer:
            for group in groups:
                batch = synthetic.synthetic_batch(group, WIDTH)
                batch = dataclasses.replace(batch, ids=[expected.ids[i] for i in group])
                writer.write_checkpoint_async(batch, "test")
    merge_checkpoints(run_dir)
    return expected


def _per_token(expected, layer, row):
    offsets = expected.outputs[f"layer_{layer}/per_token_offsets"]
    return expected.outputs[f"layer_{layer}/per_token"][offsets[row] : offsets[row + 1]]


@pytest.fixture
def merged(tmp_path, synthetic):
    """A 30-row run merged from shuffled checkpoints of two ranks."""
    order = np.random.default_rng(3).permutation(30)
    groups = [[order[0:7], order[7:15]], [order[15:22], order[22:30]]]
    run_dir = tmp_path / "run"
    return run_dir, _merge(run_dir, synthetic, 30, groups)


def test_every_output_reads_back_as_merged(merged):
    run_dir, expected = merged
    with open_embeddings(run_dir) as e:
        assert isinstance(e, Embeddings)
        assert len(e) == 30
        assert list(e.ids) == list(e) == expected.ids
        assert e.layers == (2, 4)
        assert e.poolings == ("bos", "mean", "per_token")
        for row, name in enumerate(expected.ids):
            assert name in e
            assert e[name].dtype == np.float32
            assert np.array_equal(e[name], expected.outputs["layer_4/mean"][row])
            for layer in e.layers:
                for kind in ("mean", "bos"):
                    got = e.get(name, layer=layer, pooling=kind)
                    assert np.array_equal(got, expected.outputs[f"layer_{layer}/{kind}"][row])
                tokens = e.get(name, layer=layer, pooling="per_token")
                assert tokens.shape == (expected.lengths[row], WIDTH)
                assert np.array_equal(tokens, _per_token(expected, layer, row))
        assert np.array_equal(e.get(expected.ids[5], 2, "per-token"), _per_token(expected, 2, 5))
        assert np.array_equal(e.lengths, expected.lengths)
        assert np.array_equal(e.truncated, expected.truncated)
        assert e.truncated.any() and not e.truncated.all()
        for layer in e.layers:
            assert e.mean(layer).shape == (30, WIDTH)
            assert np.array_equal(e.mean(layer), expected.outputs[f"layer_{layer}/mean"])
        assert np.array_equal(e.mean(), e.mean(4))
        assert np.array_equal(e.dataset(2, "bos")[3:5], expected.outputs["layer_2/bos"][3:5])
        assert "prot_30_é" not in e and 3 not in e


def test_config_is_the_manifest_as_python_values(merged):
    run_dir, _ = merged
    with open_embeddings(run_dir / "embeddings.h5") as e:
        assert e.config == read_manifest(run_dir)
        assert e.config["layers"] == [2, 4]
        assert e.config["model_checksum"] is None
        assert e.config["versions"] == {"virnucpro-ckpt": "0.1.0"}
        assert isinstance(e.config["num_sequences"], int)


def test_close_releases_the_file_and_later_reads_say_so(merged):
    run_dir, expected = merged
    e = open_embeddings(str(run_dir))
    e.get(expected.ids[0])  # a read keeps the dataset open; closing still releases it
    e.close()
    e.close()
    with pytest.raises(EmbeddingsFileError, match="is closed; open it again"):
        e.get(expected.ids[0])
    with h5py.File(run_dir / "embeddings.h5", "a") as f:
        f.attrs["note"] = '"writable again"'
    with open_embeddings(run_dir) as e:
        assert e.config["note"] == "writable again"
    with pytest.raises(EmbeddingsFileError, match="is closed"):
        e.mean()


def test_unknown_id_layer_and_pooling_name_what_exists(merged):
    run_dir, expected = merged
    with open_embeddings(run_dir) as e:
        with pytest.raises(KeyError) as info:
            e["nope"]
        assert str(info.value).startswith("no id 'nope' in ")
        assert "30 ids: 'prot_0_é', 'prot_1_é', 'prot_2_é', ..." in str(info.value)
        with pytest.raises(EmbeddingsKeyError, match=r"no layer 3 in .*; it holds layers 2, 4"):
            e.get(expected.ids[0], layer=3)
        with pytest.raises(EmbeddingsKeyError, match=r"no layer 5 in .*; it holds layers 2, 4"):
            e.mean(5)
        with pytest.raises(
            EmbeddingsKeyError,
            match=r"no 'max' pooling for layer 4 .*; it holds bos, mean, per_token",
        ):
            e.get(expected.ids[0], pooling="max")
        with pytest.raises(EmbeddingsKeyError, match=r"get\(id, pooling='per_token'\)"):
            e.dataset(2, "per_token")


def test_file_problems_are_one_clear_checkpoint_error(tmp_path, merged):
    run_dir, _ = merged
    cases = {}
    cases["does not exist; give a run directory"] = tmp_path / "absent.h5"
    (tmp_path / "unfinished").mkdir()
    cases["has no embeddings.h5: .* resume the run"] = tmp_path / "unfinished"
    (tmp_path / "notes.h5").write_text("not hdf5")
    cases["is not a readable HDF5 file"] = tmp_path / "notes.h5"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    cases[r"not a virnucpro embeddings file \(.*it holds x\)"] = tmp_path / "other.h5"
    checkpoint = next((run_dir / "checkpoints" / "rank_0").iterdir())
    cases["is one checkpoint, not the merged result"] = checkpoint
    for message, path in cases.items():
        with pytest.raises(EmbeddingsFileError, match=message) as info:
            open_embeddings(path)
        assert isinstance(info.value, CheckpointError)
        assert "\n" not in str(info.value)


def test_repeated_ids_refuse_lookup_by_id(tmp_path, synthetic):
    ids = ["a", "b", "a", "c"]
    _merge(tmp_path / "run", synthetic, 4, [[np.arange(4)]], ids=ids)
    with open_embeddings(tmp_path / "run") as e:
        assert list(e.ids) == ids
        with pytest.raises(EmbeddingsFileError, match="repeats ids"):
            e["b"]


def _move_outside(path, name, cuts, folder):
    """Rewrite dataset ``name`` as raw segment files split at rows ``cuts``; return them."""
    with h5py.File(path, "r+") as f:
        data = f[name][()]
        del f[name]
        row_bytes = data[0].nbytes
        edges = [0, *cuts, data.shape[0]]
        segments = []
        for number, (lo, hi) in enumerate(itertools.pairwise(edges)):
            segment = folder / f"{name.replace('/', '_')}_{number}.bin"
            segment.write_bytes(data[lo:hi].astype("<f4").tobytes())
            segments.append((str(segment), 0, (hi - lo) * row_bytes))
        f.create_dataset(name, shape=data.shape, dtype="<f4", external=segments)
    return [Path(s[0]) for s in segments]


def test_opening_and_one_lookup_read_only_what_they_need(tmp_path, merged):
    """Data held in deleted files cannot be read, so anything reading it would fail."""
    run_dir, expected = merged
    path = shutil.copytree(run_dir, tmp_path / "lazy") / "embeddings.h5"
    row = 11
    with h5py.File(path, "r") as f:
        span = f["layer_2/per_token_spans"][row].tolist()
    tokens = _move_outside(path, "layer_2/per_token", span, tmp_path)
    bos = _move_outside(path, "layer_4/bos", [], tmp_path)
    for segment in [tokens[0], tokens[2], *bos]:
        segment.unlink()
    with open_embeddings(path) as e:
        assert e.poolings == ("bos", "mean", "per_token")
        assert e.ids is e.ids
        name = expected.ids[row]
        assert np.array_equal(e[name], expected.outputs["layer_4/mean"][row])
        assert np.array_equal(e.get(name, 2, "per_token"), _per_token(expected, 2, row))
        assert np.array_equal(e.lengths, expected.lengths)
        with pytest.raises(OSError, match="external raw data file"):
            e.get(expected.ids[row + 1], 2, "per_token")
        with pytest.raises(OSError, match="external raw data file"):
            e.get(name, 4, "bos")


# Ids are UTF-8 text; NUL ends an HDF5 variable-length string, and FASTA ids never hold one.
ID_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_id_maps_to_its_own_row(synthetic, data):
    num = data.draw(st.integers(1, 40), label="num")
    ids = data.draw(st.lists(ID_TEXT, min_size=num, max_size=num, unique=True), label="ids")
    order = np.asarray(data.draw(st.permutations(range(num)), label="order"), dtype=np.int64)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, num - 1)), max_size=5), label="cuts"))
    groups = [g for g in np.split(order, cuts) if g.size]
    ranks = data.draw(st.integers(1, 3), label="ranks")
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        expected = _merge(run_dir, synthetic, num, [groups[r::ranks] for r in range(ranks)], ids)
        with open_embeddings(run_dir) as e:
            assert list(e.ids) == ids
            for row, name in enumerate(ids):
                assert name in e
                assert np.array_equal(e[name], expected.outputs["layer_4/mean"][row])
                assert np.array_equal(e.get(name, 2, "per_token"), _per_token(expected, 2, row))
