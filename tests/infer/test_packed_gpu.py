"""GPU: the packed forward in bf16 against fair-esm's own fp32 forward on the same
random weights, for the 650M and 3B architectures, with every attention backend and
every compile mode (the fused path: block i's residual add and block i+1's layer norm
in one compiled step, with each mode's inductor options).

Run on a CUDA machine with `pytest tests/infer/test_packed_gpu.py -s` to see the worst
cosines printed as JSON lines."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from virnucpro.infer import PackedESM2, load_model
from virnucpro.infer.attention import torch_varlen_attn
from virnucpro.infer.packed import (
    COMPILE_MODES,
    DEFAULT_COMPILE_MODE,
    RELEASE_THREAD_NAME,
    release_compile_workers,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

RESIDUES = "LAGVSERTIDPKQNFYMHWC"
LENGTHS = [1, 2, 9, 60, 61, 75, 90, 104, 118, 131, 140, 152, 166, 166, 200, 260, 333, 512, 1022]


def generated_sequences() -> list[str]:
    generator = torch.Generator().manual_seed(0)
    sequences = []
    for copy in range(2):
        for length in LENGTHS:
            picks = torch.randint(0, len(RESIDUES), (length,), generator=generator).tolist()
            residues = [RESIDUES[i] for i in picks]
            if copy == 1 and length > 8:
                residues[3] = "<mask>"
                residues[length // 2] = "<unk>"
                residues[-2] = "X"
            sequences.append("".join(residues))
    return sequences


# The worst per-sequence mean cosine any compiled path may reach against fp32.
COMPILED_FLOOR = 0.9998


def backends_to_check() -> list[tuple[str, str | None]]:
    """(attention, compile mode or None for eager)."""
    names = ["sdpa", "loop"] + (["varlen"] if torch_varlen_attn() is not None else [])
    return [(name, None) for name in names] + [("auto", mode) for mode in COMPILE_MODES]


def worst_cosines(out: torch.Tensor, references: list[torch.Tensor], bounds: list[int]):
    worst_mean, worst_residue = 1.0, 1.0
    for index, reference in enumerate(references):
        mine = out[bounds[index] : bounds[index + 1]].float()
        residues, expected = mine[1:-1], reference[1:-1]
        mean_cos = F.cosine_similarity(residues.mean(0), expected.mean(0), dim=0).item()
        residue_cos = F.cosine_similarity(residues, expected, dim=-1).min().item()
        worst_mean, worst_residue = min(worst_mean, mean_cos), min(worst_residue, residue_cos)
    return worst_mean, worst_residue


@pytest.mark.parametrize("name", ["esm2_t33_650M_UR50D", "esm2_t36_3B_UR50D"])
def test_bf16_packed_matches_fair_esm_fp32(name, packing):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    loaded = load_model(name, random_weights=True, seed=0, device="cuda")
    model, last = loaded.model, loaded.num_layers
    layers = [last // 2, last]
    sequences = generated_sequences()
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(sequences)
    input_ids, cu_seqlens = input_ids.cuda(), cu_seqlens.cuda()
    bounds = cu_seqlens.tolist()
    references = {layer: [] for layer in layers}
    with torch.no_grad():
        for tokens in parts:
            out = model(tokens[None].cuda(), repr_layers=layers)["representations"]
            for layer in layers:
                references[layer].append(out[layer][0])

    fp32 = PackedESM2(model, attention="sdpa")(input_ids, cu_seqlens, max_seqlen, layers)
    for layer in layers:
        scale = max(reference.abs().max().item() for reference in references[layer])
        for index, reference in enumerate(references[layer]):
            error = (fp32[layer][bounds[index] : bounds[index + 1]] - reference).abs().max()
            assert error.item() <= 1e-4 * scale, f"fp32 sequence {index} layer {layer}"

    model.to(torch.bfloat16)
    outputs = {}
    for attention, mode in backends_to_check():
        compiled = mode is not None
        packed = PackedESM2(
            model, attention=attention, compile=compiled, compile_mode=mode or DEFAULT_COMPILE_MODE
        )
        out = packed(input_ids, cu_seqlens, max_seqlen, layers)
        outputs[(attention, mode)] = out
        for layer in layers:
            worst_mean, worst_residue = worst_cosines(out[layer], references[layer], bounds)
            report = {
                "model": name,
                "attention": attention,
                "compile": mode,
                "layer": layer,
                "worst_mean_cosine": round(worst_mean, 6),
                "worst_residue_cosine": round(worst_residue, 6),
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(),
            }
            print(json.dumps(report))
            assert worst_mean >= (COMPILED_FLOOR if compiled else 0.999), report
            assert worst_residue >= 0.99, report

    baseline = outputs[("sdpa", None)][last].float()
    for key, out in outputs.items():
        agreement = F.cosine_similarity(out[last].float(), baseline, dim=-1).min().item()
        assert agreement >= 0.99, f"{key} disagrees with sdpa: min cosine {agreement}"


def test_released_compile_workers_are_gone_and_a_later_compile_still_works(packing):
    """On the GPU host's own pool: after a compiled forward, releasing inductor's
    compile processes leaves none running (a run's exit then does not wait for them);
    a later compilation (another model's graphs) still gives the eager numbers."""
    from torch._inductor.async_compile import _pool_set

    sequences = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "LAGVSERTIDPKQNFYMHWC" * 7]
    for name in ["esm2_t6_8M_UR50D", "esm2_t12_35M_UR50D"]:
        model = load_model(name, random_weights=True, device="cuda", dtype=torch.bfloat16).model
        input_ids, cu_seqlens, max_seqlen, _ = packing.pack(sequences)
        input_ids, cu_seqlens = input_ids.cuda(), cu_seqlens.cuda()
        last = model.num_layers
        got = PackedESM2(model, compile=True)(input_ids, cu_seqlens, max_seqlen, [last])[last]
        release_compile_workers()
        for thread in threading.enumerate():
            if thread.name == RELEASE_THREAD_NAME:
                thread.join()
        assert not _pool_set
        expected = PackedESM2(model)(input_ids, cu_seqlens, max_seqlen, [last])[last]
        agreement = F.cosine_similarity(got.float(), expected.float(), dim=-1).min().item()
        assert agreement >= COMPILED_FLOOR, (name, agreement)


def test_compiled_layer_norms_wider_than_1024_are_persistent_reductions(make_esm2, packing):
    """ESM-2 650M's 1280-wide layer norms compile to persistent kernels (one pass per
    row; inductor alone loops over rows wider than 1024), and the output still matches
    the eager forward."""
    import re

    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    model = make_esm2(2, 1280, 20, seed=1).cuda().to(torch.bfloat16)
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(generated_sequences()[:8])
    input_ids, cu_seqlens = input_ids.cuda(), cu_seqlens.cuda()
    torch._dynamo.reset()
    with inductor_config.patch(fx_graph_cache=False):
        compiled = PackedESM2(model, compile=True)
        got, sources = run_and_get_code(compiled, input_ids, cu_seqlens, max_seqlen, [2])
    text = "\n".join(sources)
    assert re.search(r"def triton_per_fused\w*native_layer_norm", text), "no persistent norm"
    assert not re.search(r"def triton_red_fused\w*native_layer_norm", text), "a looped norm"
    expected = PackedESM2(model)(input_ids, cu_seqlens, max_seqlen, [2])[2]
    agreement = F.cosine_similarity(got[2].float(), expected.float(), dim=-1).min().item()
    assert agreement >= COMPILED_FLOOR, agreement
