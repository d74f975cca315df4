"""How the merged file stores embeddings: the run's dtype, chunked per-token rows, and
the compression asked for, all checked by verify_output and read back exactly."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from virnucpro.ckpt import (
    AsyncCheckpointWriter,
    EmbeddingsKeyError,
    InvalidCheckpointError,
    MergeError,
    merge_checkpoints,
    open_embeddings,
    validate_checkpoint_hdf5,
    verify_output,
    write_manifest,
)
from virnucpro.ckpt.layout import PARTS_DIR
from virnucpro.ckpt.storage import CHUNK_BYTES

from .conftest import merged_in_input_order

WIDTH = 16


def _cast(batch, dtype):
    outputs = {
        name: value if name.endswith("_offsets") else value.astype(dtype)
        for name, value in batch.outputs.items()
    }
    return dataclasses.replace(batch, outputs=outputs)


def _run(run_dir, synthetic, num, dtype, compression, width=WIDTH):
    manifest = {
        **synthetic.manifest_for(num, width),
        "store_dtype": np.dtype(dtype).name,
        "compression": compression,
    }
    write_manifest(run_dir, manifest)
    order = np.random.default_rng(1).permutation(num)
    with AsyncCheckpointWriter(run_dir, manifest, 0, 1) as writer:
        for part in np.array_split(order, 3):
            writer.write_checkpoint_async(_cast(synthetic.synthetic_batch(part, width), dtype), "t")
    merge_checkpoints(run_dir)
    return _cast(synthetic.synthetic_batch(np.arange(num), width), dtype)


def _parts(run_dir):
    return sorted((run_dir / PARTS_DIR).iterdir())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_merged_datasets_keep_dtype_and_compression_and_verify(
    tmp_path, synthetic, dtype, compression
):
    run_dir = tmp_path / "run"
    expected = _run(run_dir, synthetic, 40, dtype, compression)
    assert verify_output(run_dir) is None
    data, _attrs = merged_in_input_order(run_dir / "embeddings.h5")
    with h5py.File(run_dir / "embeddings.h5", "r") as f:
        for layer in synthetic.LAYERS:
            assert f[f"layer_{layer}/per_token"].dtype == dtype
            assert f[f"layer_{layer}/per_token"].is_virtual
            assert f[f"layer_{layer}/per_token_spans"].dtype == np.int64
            mean = f[f"layer_{layer}/mean"]
            assert mean.dtype == dtype
            assert mean.compression == (None if compression == "none" else compression)
            assert (mean.chunks is None) == (compression == "none")
            assert np.array_equal(mean[()], expected.outputs[f"layer_{layer}/mean"])
            name = f"layer_{layer}/per_token"
            assert np.array_equal(data[name], expected.outputs[name])
    for part in _parts(run_dir):
        with h5py.File(part, "r") as f:
            for layer in synthetic.LAYERS:
                tokens = f[f"layer_{layer}/per_token"]
                assert tokens.dtype == dtype
                assert tokens.compression == (None if compression == "none" else compression)
                if compression != "none":
                    assert tokens.chunks[1] == WIDTH
                    assert tokens.chunks[0] * WIDTH * np.dtype(dtype).itemsize <= CHUNK_BYTES
    with open_embeddings(run_dir) as result:
        assert result.store_dtype == dtype
        assert result["prot_3_é"].dtype == dtype


def test_compressed_per_token_rows_are_cut_into_chunks_of_about_a_mebibyte(tmp_path, synthetic):
    run_dir = tmp_path / "run"
    width = 1280
    _run(run_dir, synthetic, 300, np.float16, "lzf", width)
    with h5py.File(_parts(run_dir)[0], "r") as f:
        tokens = f["layer_4/per_token"]
        assert tokens.chunks == (CHUNK_BYTES // (width * 2), width)
        assert tokens.shape[0] > 2 * tokens.chunks[0]
    with h5py.File(run_dir / "embeddings.h5", "r") as f:
        assert f["layer_4/mean"].chunks is not None


def test_a_flipped_value_of_a_compressed_float16_part_is_found(tmp_path, synthetic):
    run_dir = tmp_path / "run"
    _run(run_dir, synthetic, 40, np.float16, "gzip")
    part = _parts(run_dir)[1]
    with h5py.File(part, "r+") as f:
        f["layer_2/per_token"][5, 3] = np.float16(7.0)
    problem = verify_output(run_dir)
    assert problem.endswith(f"part {PARTS_DIR}/{part.name} is damaged (its data checksum differs)")


def test_a_checkpoint_of_another_dtype_is_not_this_runs(tmp_path, synthetic):
    run_dir = tmp_path / "run"
    manifest = synthetic.manifest_for(10, WIDTH)
    write_manifest(run_dir, manifest)
    with AsyncCheckpointWriter(run_dir, manifest, 0, 1) as writer:
        path = writer.write_checkpoint_async(
            _cast(synthetic.synthetic_batch(np.arange(10), WIDTH), np.float16), "t"
        )
    with pytest.raises(InvalidCheckpointError, match="expected float32"):
        validate_checkpoint_hdf5(path, manifest)
    info = validate_checkpoint_hdf5(path, {**manifest, "store_dtype": "float16"})
    assert info.num_sequences == 10


def _rows(num):
    rng = np.random.default_rng(5)
    return {
        "input_length": rng.integers(1, 3000, num).astype(np.int64),
        "read_id": np.array([f"read_{i // 6}_ü" for i in range(num)], dtype=object),
        "frame": (np.arange(num) % 6).astype(np.int8),
    }


def test_per_row_datasets_are_written_with_digests_and_read_back(tmp_path, synthetic):
    run_dir = tmp_path / "run"
    manifest = synthetic.manifest_for(24, WIDTH)
    write_manifest(run_dir, manifest)
    with AsyncCheckpointWriter(run_dir, manifest, 0, 1) as writer:
        writer.write_checkpoint_async(synthetic.synthetic_batch(np.arange(24), WIDTH), "t")
    rows = _rows(24)
    merge_checkpoints(run_dir, rows=rows)
    assert verify_output(run_dir) is None
    with open_embeddings(run_dir) as result:
        assert result.row_datasets == (
            "lengths",
            "truncated",
            "frame",
            "input_length",
            "read_id",
        )
        assert "row_datasets" not in result.config
        assert list(result.row_data("read_id")) == list(rows["read_id"])
        assert result.row_data("frame").dtype == np.int8
        assert np.array_equal(result.row_data("input_length"), rows["input_length"])
        assert np.array_equal(result.row_data("lengths"), result.lengths)
        with pytest.raises(EmbeddingsKeyError, match="no per-row dataset 'chunk'"):
            result.row_data("chunk")
    with h5py.File(run_dir / "embeddings.h5", "r+") as f:
        f["read_id"][7] = "read_1_u"
    assert "read_id is damaged" in verify_output(run_dir)
    with h5py.File(run_dir / "embeddings.h5", "r+") as f:
        del f["frame"]
    assert "datasets missing ['frame']" in verify_output(run_dir)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"lengths": np.zeros(24)}, "'lengths' is taken"),
        ({"layer_3": np.zeros(24)}, "'layer_3' is taken"),
        ({"a/b": np.zeros(24)}, "not a plain name"),
        ({"chunk": np.zeros(23)}, r"chunk has shape \(23,\), not \(24,\)"),
    ],
)
def test_per_row_datasets_of_wrong_name_or_length_are_refused(tmp_path, synthetic, rows, message):
    run_dir = tmp_path / "run"
    manifest = synthetic.manifest_for(24, WIDTH)
    write_manifest(run_dir, manifest)
    with pytest.raises(MergeError, match=message):
        merge_checkpoints(run_dir, rows=rows)
    assert not (run_dir / "embeddings.h5").exists()
