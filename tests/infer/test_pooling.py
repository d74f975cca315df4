"""Pooling on packed hidden states equals fair-esm's per-sequence pooling."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.infer.pooling import check_poolings, pool_hidden_states

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
support = importlib.import_module("runner_support")

POOLINGS = ("mean", "max", "bos", "per_token")


def _cu_seqlens(token_counts):
    return torch.tensor(np.concatenate([[0], np.cumsum(token_counts)]), dtype=torch.int32)


@pytest.mark.parametrize("layers", [(0, 2), (1,)])
def test_pooling_equals_fair_esm_per_sequence(layers):
    model = support.tiny_esm2(num_layers=2, embed_dim=32, seed=3)
    records = [*support.make_records(9, seed=1, max_len=60), ("long", "M" * 300), ("one", "W")]
    batch = support.packed_batch(records, range(len(records)))
    with torch.inference_mode():
        hidden = support.ReferencePackedForward(model)(
            batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"], layers
        )
        pooled = pool_hidden_states(hidden, batch["cu_seqlens"], POOLINGS)
        for layer in layers:
            per_token = pooled[f"layer_{layer}/per_token"].numpy()
            offsets = pooled[f"layer_{layer}/per_token_offsets"].numpy()
            assert offsets.tolist() == [0, *np.cumsum([len(s) for _, s in records]).tolist()]
            for i, (_, sequence) in enumerate(records):
                tokens = support.tokens_of(sequence).unsqueeze(0)
                alone = model(tokens, repr_layers=[layer])["representations"][layer][0]
                residues = alone[1 : len(sequence) + 1]
                # Against the exact mean of fair-esm's rows: fair-esm's own float32
                # mean drifts by a few ulps on long sequences (4e-6 there).
                np.testing.assert_allclose(
                    pooled[f"layer_{layer}/mean"][i].numpy(),
                    residues.double().mean(0).numpy(),
                    rtol=0,
                    atol=1e-6,
                )
                np.testing.assert_allclose(
                    pooled[f"layer_{layer}/mean"][i].numpy(),
                    residues.mean(0).numpy(),
                    rtol=0,
                    atol=4e-6,
                )
                assert torch.equal(pooled[f"layer_{layer}/bos"][i], alone[0])
                assert torch.equal(pooled[f"layer_{layer}/max"][i], residues.amax(0))
                assert np.array_equal(per_token[offsets[i] : offsets[i + 1]], residues.numpy())


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=12),
    dim=st.integers(min_value=1, max_value=9),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_pooling_matches_slices_for_any_packing(lengths, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    token_counts = [n + 2 for n in lengths]
    cu = _cu_seqlens(token_counts)
    hidden = torch.randn(sum(token_counts), dim, generator=generator) * 10
    pooled = pool_hidden_states({5: hidden}, cu, POOLINGS)
    assert set(pooled) == {
        "layer_5/mean",
        "layer_5/max",
        "layer_5/bos",
        "layer_5/per_token",
        "layer_5/per_token_offsets",
    }
    offsets = pooled["layer_5/per_token_offsets"]
    assert offsets.tolist() == [0, *np.cumsum(lengths).tolist()]
    assert pooled["layer_5/per_token"].shape == (sum(lengths), dim)
    for i, n in enumerate(lengths):
        start = int(cu[i])
        residues = hidden[start + 1 : start + 1 + n]
        expected_mean = residues.double().mean(0).float() if n else torch.zeros(dim)
        np.testing.assert_allclose(
            pooled["layer_5/mean"][i].numpy(), expected_mean.numpy(), rtol=0, atol=1e-6
        )
        assert torch.equal(pooled["layer_5/bos"][i], hidden[start])
        expected_max = residues.amax(0) if n else torch.zeros(dim)
        assert torch.equal(pooled["layer_5/max"][i], expected_max)
        assert torch.equal(pooled["layer_5/per_token"][offsets[i] : offsets[i + 1]], residues)


def test_pooling_returns_float32_from_half_precision_states():
    cu = _cu_seqlens([5, 3])
    hidden = torch.randn(8, 4).to(torch.bfloat16)
    pooled = pool_hidden_states({1: hidden}, cu, POOLINGS)
    assert {v.dtype for k, v in pooled.items() if not k.endswith("_offsets")} == {torch.float32}
    expected = hidden[1:4].double().mean(0).float()
    np.testing.assert_allclose(pooled["layer_1/mean"][0].numpy(), expected.numpy(), atol=1e-6)


def test_unknown_pooling_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown pooling.*cls.*mean, max, bos, per_token"):
        check_poolings(["mean", "cls"])
    with pytest.raises(ValueError, match="none given"):
        check_poolings([])
    assert check_poolings(["bos", "mean", "bos"]) == ("bos", "mean")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mean_is_the_cpu_mean_bit_for_bit():
    """Both sum each residue segment in float64 in row order, so a run's means do not
    depend on the device, and repeated runs agree bit for bit."""
    generator = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 1023, (300,), generator=generator)
    lengths[:3] = torch.tensor([0, 1, 1022])
    cu = _cu_seqlens((lengths + 2).tolist())
    hidden = (torch.randn(int(cu[-1]), 1280, generator=generator) * 3).to(torch.bfloat16)
    on_cpu = pool_hidden_states({1: hidden}, cu, ("mean",))["layer_1/mean"]
    on_gpu = [
        pool_hidden_states({1: hidden.cuda()}, cu.cuda(), ("mean",))["layer_1/mean"].cpu()
        for _ in range(2)
    ]
    assert torch.equal(on_gpu[0], on_cpu) and torch.equal(on_gpu[1], on_cpu)
    assert torch.equal(on_cpu[0], torch.zeros(1280))
