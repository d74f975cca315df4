"""The packed forward equals fair-esm's ESM2.forward on each sequence alone (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.infer import PackedESM2
from virnucpro.infer.packed import COMPILE_MODES, DEFAULT_COMPILE_MODE

TOLERANCE = 1e-5
SIZES = [(1, 16, 2), (2, 32, 4), (4, 64, 8)]
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"


def assert_matches_fair_esm(model, packing, sequences, layers, attention="auto", compile=None):
    """`compile`: a compile mode, or None for eager."""
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(sequences)
    packed = PackedESM2(
        model,
        attention=attention,
        compile=compile is not None,
        compile_mode=compile or DEFAULT_COMPILE_MODE,
    )
    out = packed(input_ids, cu_seqlens, max_seqlen, layers)
    fair_layers = sorted({layer % (model.num_layers + 1) for layer in layers})
    assert sorted(out) == fair_layers
    bounds = cu_seqlens.tolist()
    worst = 0.0
    for index, tokens in enumerate(parts):
        reference = packing.reference(model, tokens, fair_layers)
        for layer in fair_layers:
            mine = out[layer][bounds[index] : bounds[index + 1]]
            assert mine.shape == reference[layer].shape
            error = (mine - reference[layer]).abs().max().item()
            worst = max(worst, error)
            assert error <= TOLERANCE, f"sequence {index} layer {layer}: max abs error {error}"
    return worst


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layers", [[0], [-1], [0, 1, -1], [-2, 1]])
def test_each_size_and_layer_set_equals_fair_esm(make_esm2, packing, size, layers):
    model = make_esm2(*size, seed=sum(size))
    layers = [layer for layer in layers if -(size[0] + 1) <= layer <= size[0]]
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "A", "GG", "MLPGLALLLLAAWTARALEVPTDG" * 3]
    assert_matches_fair_esm(model, packing, sequences, layers)


def test_lengths_one_to_1500_packed_together(make_esm2, packing):
    model = make_esm2(2, 32, 4, seed=7)
    generator = torch.Generator().manual_seed(3)
    lengths = [1, 2, 3, 17, 260, 1022, 1023, 1500]
    sequences = [
        "".join(RESIDUES[i] for i in torch.randint(0, 20, (n,), generator=generator))
        for n in lengths
    ]
    assert_matches_fair_esm(model, packing, sequences, [0, 1, 2])


def test_mask_and_unknown_tokens_rescale_per_sequence(make_esm2, packing):
    model = make_esm2(2, 32, 4, seed=11)
    sequences = [
        "MK<mask>TAY<unk>IAK",
        "<mask>",
        "<mask><mask><mask><mask>A",
        "ACDEFGHIK",
        "<unk><unk>",
        "M" + "<mask>" * 40 + "KL",
    ]
    assert_matches_fair_esm(model, packing, sequences, [0, 1, 2])


def test_model_without_token_dropout(make_esm2, packing):
    model = make_esm2(2, 32, 4, seed=5, token_dropout=False)
    assert_matches_fair_esm(model, packing, ["MK<mask>TAY", "ACDE<mask>"], [0, -1])


@pytest.mark.parametrize("attention", ["loop", "sdpa"])
def test_cpu_attention_backends_equal_fair_esm(make_esm2, packing, attention):
    model = make_esm2(3, 32, 4, seed=2)
    sequences = ["MKTAYIAKQR" * 7, "A", "LLGG<mask>", "P" * 300]
    assert_matches_fair_esm(model, packing, sequences, [1, -1], attention=attention)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_packing_equals_fair_esm(make_esm2, packing, data):
    size = data.draw(st.sampled_from(SIZES[:2]))
    model = make_esm2(*size, seed=data.draw(st.integers(0, 3)))
    token = st.one_of(st.sampled_from(list(RESIDUES)), st.sampled_from(["<mask>", "<unk>"]))
    short = st.lists(token, min_size=1, max_size=60).map("".join)
    long = st.integers(200, 1500).map(
        lambda n: "MKTAYIAKQRQISFVKSHFSRQ"[: n % 22 + 1] * (n // 22 + 1)
    )
    sequences = data.draw(st.lists(st.one_of(short, short, short, long), min_size=1, max_size=8))
    layers = data.draw(
        st.lists(st.integers(-(size[0] + 1), size[0]), min_size=1, max_size=3, unique=True)
    )
    assert_matches_fair_esm(model, packing, sequences, layers)


def test_weights_are_used_in_place(make_esm2, packing):
    """No copy: editing fair-esm's parameters changes the packed forward the same way."""
    model = make_esm2(2, 32, 4, seed=9)
    packed = PackedESM2(model)
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(["MKTAYIAKQR", "GGA"])
    before = packed(input_ids, cu_seqlens, max_seqlen, [-1])[2]
    with torch.no_grad():
        model.layers[1].fc2.weight.mul_(-2.0)
        model.emb_layer_norm_after.bias.add_(1.0)
    after = packed(input_ids, cu_seqlens, max_seqlen, [-1])[2]
    assert not torch.allclose(before, after)
    reference = packing.reference(model, parts[0], [2])[2]
    assert (after[: parts[0].numel()] - reference).abs().max().item() <= TOLERANCE


def test_heads_never_run(make_esm2, packing):
    model = make_esm2(2, 32, 4, seed=4)

    def refuse(*args, **kwargs):
        raise AssertionError("a head ran")

    model.lm_head.forward = refuse
    model.contact_head.forward = refuse
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(["MKTAYIAKQR"])
    out = PackedESM2(model)(input_ids, cu_seqlens, max_seqlen, [0, 1, 2])
    assert sorted(out) == [0, 1, 2]


@pytest.mark.parametrize("layers", [[3], [-4], [0, 7]])
def test_layer_out_of_range_is_refused(make_esm2, packing, layers):
    model = make_esm2(2, 32, 4)
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(["MK"])
    with pytest.raises(ValueError, match=r"does not exist: this model has layers 0\.\.2"):
        PackedESM2(model)(input_ids, cu_seqlens, max_seqlen, layers)


def test_cu_seqlens_must_be_int32(make_esm2, packing):
    model = make_esm2(1, 16, 2)
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(["MK", "A"])
    with pytest.raises(ValueError, match="int32"):
        PackedESM2(model)(input_ids, cu_seqlens.long(), max_seqlen, [-1])


@pytest.mark.parametrize("mode", list(COMPILE_MODES))
def test_compiled_forward_equals_fair_esm(make_esm2, packing, mode):
    """Every compile mode on the CPU (where the fused fc1 + GELU falls back to inductor's
    CPU code), through batches of two sizes (one compilation, token count dynamic)."""
    model = make_esm2(2, 32, 4, seed=6)
    worst = assert_matches_fair_esm(
        model, packing, ["MKTAYIAKQR", "A", "GG<mask>LLP" * 9], [0, 1, 2], compile=mode
    )
    assert worst <= TOLERANCE
    assert_matches_fair_esm(model, packing, ["MK", "ACDEFGHIKLMN" * 30], [1, 2], compile=mode)


def test_unknown_compile_mode_is_refused(make_esm2):
    with pytest.raises(
        ValueError, match=r"unknown compile_mode 'fastest'; choose one of plain, tuned"
    ):
        PackedESM2(make_esm2(1, 16, 2), compile=True, compile_mode="fastest")


def test_rotary_positions_restart_far_into_a_large_batch(make_esm2, packing):
    """Rotary depends only on relative positions in exact arithmetic, but fp32 angles at
    absolute offsets of ~60K tokens are off by ~1e-3 rad: positions must restart."""
    model = make_esm2(1, 16, 2, seed=13)
    sequences = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 4] * 450
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(sequences)
    out = PackedESM2(model)(input_ids, cu_seqlens, max_seqlen, [1])[1]
    assert input_ids.numel() > 60_000
    bounds = cu_seqlens.tolist()
    reference = packing.reference(model, parts[-1], [1])[1]
    error = (out[bounds[-2] : bounds[-1]] - reference).abs().max().item()
    assert error <= TOLERANCE


def test_the_compiled_forward_sets_its_inductor_heuristics_only_while_it_runs(make_esm2, packing):
    """Inductor's choices are the packed forward's own inside a compiled forward's call
    (where it compiles; attention runs there, eagerly, and records them), inductor's
    own in an eager forward and after the call; the cache key carries a hash of them."""
    from torch._inductor.virtualized import V

    from virnucpro.infer import inductor_heuristics
    from virnucpro.infer.attention import SequenceLoopAttention

    class RecordingAttention(SequenceLoopAttention):
        def __init__(self) -> None:
            self.seen: list[type] = []

        def attend(self, q, k, v, prepared):
            self.seen.append(type(V.choices))
            return super().attend(q, k, v, prepared)

    before = type(V.choices)
    model = make_esm2(1, 16, 2)
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(["MKTAYIAK", "GG"])
    for compile, expected in (
        (True, inductor_heuristics.WidePersistentReductions),
        (False, before),
    ):
        attention = RecordingAttention()
        PackedESM2(model, attention=attention, compile=compile)(
            input_ids, cu_seqlens, max_seqlen, [1]
        )
        assert attention.seen and set(attention.seen) == {expected}
        assert type(V.choices) is before
    key = inductor_heuristics.compile_options()["post_grad_custom_post_pass"]
    assert isinstance(key.uuid(), bytes) and key.uuid()
