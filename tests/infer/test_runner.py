"""The stream runner on CPU (same code path as CUDA minus streams) and, where a GPU is
present, with its copy and compute streams."""

import importlib
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.infer.batch_split import split_packed_batch
from virnucpro.infer.runner import AsyncInferenceRunner, SequenceOutOfMemoryError

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
support = importlib.import_module("runner_support")

LAYER = 1
MODEL = support.tiny_esm2(num_layers=LAYER, embed_dim=16, heads=2, seed=7)
FORWARD = support.ReferencePackedForward(MODEL)


def _fair_esm_alone(sequence, layer=LAYER, model=MODEL):
    with torch.inference_mode():
        tokens = support.tokens_of(sequence).unsqueeze(0)
        return model(tokens, repr_layers=[layer])["representations"][layer][0]


def _assert_mean_of_rows(pooled, rows):
    """The exact mean of fair-esm's residue rows to 1e-6; fair-esm's own float32
    `mean` is itself off by a few ulps on long sequences, hence 4e-6 there."""
    np.testing.assert_allclose(pooled, rows.astype(np.float64).mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(pooled, rows.mean(0), rtol=0, atol=4e-6)


def _sizes(count, cuts):
    """Batch sizes from sorted cut points in 1..count-1."""
    bounds = [0, *sorted(set(cuts)), count]
    return [b - a for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=24),
    cuts=st.lists(st.integers(min_value=1, max_value=23), max_size=8),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_every_sequence_exactly_once_in_loader_order(count, cuts, seed):
    records = support.make_records(count, seed=seed, max_len=12)
    sizes = _sizes(count, [c for c in cuts if c < count])
    batches = support.batches_of(records, sizes)
    runner = AsyncInferenceRunner(FORWARD, "cpu", [LAYER], poolings=("mean", "per_token"))
    results = list(runner.run(batches))

    assert [r.batch_index for r in results] == list(range(len(sizes)))
    assert [r.num_sequences for r in results] == sizes
    assert np.concatenate([r.indices for r in results]).tolist() == list(range(count))
    assert [i for r in results for i in r.sequence_ids] == [name for name, _ in records]
    for result in results:
        assert result.outputs[f"layer_{LAYER}/mean"].shape == (result.num_sequences, 16)
        offsets = result.outputs[f"layer_{LAYER}/per_token_offsets"]
        assert offsets.tolist() == [0, *np.cumsum(result.lengths).tolist()]
        assert result.outputs[f"layer_{LAYER}/per_token"].shape == (offsets[-1], 16)


def test_outputs_equal_fair_esm_and_metadata_is_carried():
    records = [*support.make_records(7, seed=2, max_len=50), ("big", "K" * 120)]
    batches = support.batches_of(records, [3, 1, 4])
    batches[1]["truncated"] = torch.tensor([True])
    runner = AsyncInferenceRunner(FORWARD, "cpu", [0, LAYER], poolings=("mean", "bos", "per_token"))
    results = list(runner.run(batches))
    row = 0
    for result in results:
        for i, name in enumerate(result.sequence_ids):
            sequence = records[row][1]
            assert name == records[row][0]
            assert result.lengths[i] == len(sequence)
            assert result.truncated[i] == (row == 3)
            for layer in (0, LAYER):
                alone = _fair_esm_alone(sequence, layer).numpy()
                out = result.outputs
                _assert_mean_of_rows(out[f"layer_{layer}/mean"][i], alone[1:-1])
                assert np.array_equal(out[f"layer_{layer}/bos"][i], alone[0])
                offsets = out[f"layer_{layer}/per_token_offsets"]
                per_token = out[f"layer_{layer}/per_token"][offsets[i] : offsets[i + 1]]
                assert np.array_equal(per_token, alone[1:-1])
                assert out[f"layer_{layer}/mean"].dtype == np.float32
            row += 1
    assert row == len(records)


def _slow_loader(batches, pause_s):
    for batch in batches:
        time.sleep(pause_s)
        yield batch


def test_statistics_count_what_was_run():
    records = support.make_records(10, seed=4, max_len=30)
    batches = support.batches_of(records, [4, 4, 2])
    runner = AsyncInferenceRunner(FORWARD, "cpu", [LAYER])
    assert runner.get_statistics()["total_batches"] == 0
    started = time.perf_counter()
    results = list(runner.run(_slow_loader(batches, 0.05)))
    wall = time.perf_counter() - started
    stats = runner.get_statistics()
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    assert stats["total_batches"] == 3 == len(results)
    assert stats["total_sequences"] == 10
    assert stats["total_tokens"] == tokens
    assert stats["total_residues"] == sum(len(s) for _, s in records) == tokens - 20
    assert 0.15 <= stats["data_wait_s"] <= stats["elapsed_s"] <= wall
    assert stats["throughput"] == pytest.approx(tokens / stats["elapsed_s"])
    assert stats["sequences_per_s"] == pytest.approx(10 / stats["elapsed_s"])
    assert stats["oom_splits"] == 0
    assert stats["peak_memory_bytes"] is None
    list(runner.run(batches[:1]))
    assert runner.get_statistics()["total_sequences"] == 4


def test_out_of_memory_batch_is_split_and_nothing_is_lost():
    records = [*support.make_records(9, seed=5, min_len=5, max_len=20), ("huge", "L" * 60)]
    batches = support.batches_of(records, [10])
    limited = support.OutOfMemoryAbove(FORWARD, max_tokens=70)
    runner = AsyncInferenceRunner(limited, "cpu", [LAYER], poolings=("mean", "per_token"))
    [result] = list(runner.run(batches))
    reference = next(
        AsyncInferenceRunner(FORWARD, "cpu", [LAYER], poolings=("mean", "per_token")).run(batches)
    )
    assert runner.get_statistics()["oom_splits"] >= 2
    assert max(limited.attempts) == batches[0]["input_ids"].numel()
    assert result.indices.tolist() == list(range(10))
    assert result.sequence_ids == [name for name, _ in records]
    for name in reference.outputs:
        np.testing.assert_allclose(
            result.outputs[name], reference.outputs[name], rtol=0, atol=1e-6, err_msg=name
        )
    offsets = result.outputs[f"layer_{LAYER}/per_token_offsets"]
    assert np.array_equal(offsets, reference.outputs[f"layer_{LAYER}/per_token_offsets"])
    assert np.array_equal(
        result.outputs[f"layer_{LAYER}/per_token"], reference.outputs[f"layer_{LAYER}/per_token"]
    )


def test_a_sequence_too_large_alone_is_named():
    records = [("small_a", "MKV"), ("too_big", "W" * 80), ("small_b", "AC")]
    batch = support.packed_batch(records, [10, 11, 12])
    runner = AsyncInferenceRunner(support.OutOfMemoryAbove(FORWARD, 40), "cpu", [LAYER])
    with pytest.raises(
        SequenceOutOfMemoryError, match=r"'too_big' \(input index 11, 80 residues\)"
    ):
        list(runner.run([batch]))


def test_split_packed_batch_keeps_every_field_consistent():
    records = support.make_records(5, seed=9, max_len=15)
    batch = support.packed_batch(records, [7, 8, 9, 10, 11])
    first, second = split_packed_batch(batch, 2)
    for part, rows in ((first, records[:2]), (second, records[2:])):
        expected = support.packed_batch(rows, [0] * len(rows))
        for key in ("input_ids", "cu_seqlens", "lengths", "truncated"):
            assert torch.equal(part[key], expected[key]), key
        assert part["max_seqlen"] == expected["max_seqlen"]
        assert part["sequence_ids"] == [name for name, _ in rows]
        assert part["num_sequences"] == len(rows)
    assert first["indices"].tolist() == [7, 8] and second["indices"].tolist() == [9, 10, 11]
    with pytest.raises(ValueError, match="cannot split a batch of 5 sequences at 5"):
        split_packed_batch(batch, 5)


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="no representation layers"):
        AsyncInferenceRunner(FORWARD, "cpu", [])
    with pytest.raises(ValueError, match="unknown pooling"):
        AsyncInferenceRunner(FORWARD, "cpu", [LAYER], poolings=["median"])


class _SlowEmbeddingForward:
    """Layer 0 of ESM-2 (embedding x 0.88: no <mask> in the input), computed after the
    GPU has been kept busy, with no host sync: if results were read before the compute
    stream finished they would be wrong (lesson 3)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, cu_seqlens, max_seqlen, repr_layers):
        torch.cuda._sleep(20_000_000)
        return {0: self.model.embed_tokens(input_ids) * 0.88}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streams_read_results_only_after_the_compute_stream_finished():
    model = support.tiny_esm2(num_layers=1, embed_dim=16, heads=2, seed=7)
    gpu_model = support.tiny_esm2(num_layers=1, embed_dim=16, heads=2, seed=7).cuda()
    records = support.make_records(40, seed=11, max_len=200)
    batches = support.batches_of(records, [5, 9, 1, 13, 12])
    runner = AsyncInferenceRunner(
        _SlowEmbeddingForward(gpu_model), "cuda", [0], poolings=("mean", "bos", "per_token")
    )
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = list(runner.run(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    row = 0
    for result in results:
        offsets = result.outputs["layer_0/per_token_offsets"]
        for i in range(result.num_sequences):
            alone = _fair_esm_alone(records[row][1], 0, model).numpy()
            _assert_mean_of_rows(result.outputs["layer_0/mean"][i], alone[1:-1])
            np.testing.assert_allclose(result.outputs["layer_0/bos"][i], alone[0], atol=1e-6)
            per_token = result.outputs["layer_0/per_token"][offsets[i] : offsets[i + 1]]
            np.testing.assert_allclose(per_token, alone[1:-1], rtol=0, atol=1e-6)
            row += 1
    assert row == 40
    stats = runner.get_statistics()
    assert stats["total_sequences"] == 40 and stats["peak_memory_bytes"] > 0


def test_float16_rows_are_the_float32_rows_cast_on_the_device():
    records = support.make_records(9, seed=4, max_len=40)
    poolings = ("mean", "max", "bos", "per_token")
    wide = AsyncInferenceRunner(FORWARD, "cpu", [0, LAYER], poolings=poolings)
    half = AsyncInferenceRunner(
        FORWARD, "cpu", [0, LAYER], poolings=poolings, store_dtype="float16"
    )
    sizes = [4, 5]
    for a, b in zip(
        wide.run(support.batches_of(records, sizes)),
        half.run(support.batches_of(records, sizes)),
        strict=True,
    ):
        assert a.outputs.keys() == b.outputs.keys()
        for name, value in a.outputs.items():
            if name.endswith("_offsets"):
                assert b.outputs[name].dtype == np.int64
                assert np.array_equal(b.outputs[name], value)
            else:
                assert value.dtype == np.float32 and b.outputs[name].dtype == np.float16
                assert np.array_equal(b.outputs[name], value.astype(np.float16))
