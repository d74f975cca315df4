"""Attention backend selection, and varlen's signature handling across torch versions.

The real varlen kernel needs CUDA; here a pure-torch stand-in with each published
signature (torch 2.9: no `scale`, always head_dim**-0.5; later: `scale` keyword)
checks that q is scaled exactly once, whichever signature is installed."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from virnucpro.infer import (
    PackedESM2,
    PaddedSDPAAttention,
    SequenceLoopAttention,
    VarlenFlashAttention,
    select_attention,
)
from virnucpro.infer.attention import varlen_accepts_scale


def _reference_varlen(query, key, value, cu_seq_q, max_q, scale):
    bounds = cu_seq_q.tolist()
    outputs = []
    for start, stop in itertools.pairwise(bounds):
        q, k, v = (x[start:stop].transpose(0, 1) for x in (query, key, value))
        outputs.append(F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(0, 1))
    return torch.cat(outputs)


def varlen_torch_2_9(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None
):
    assert not is_causal
    return _reference_varlen(query, key, value, cu_seq_q, max_q, scale=None)


def varlen_torch_2_13(
    query,
    key,
    value,
    cu_seq_q,
    cu_seq_k,
    max_q,
    max_k,
    *,
    return_aux=None,
    scale=None,
    window_size=(-1, -1),
):
    return _reference_varlen(query, key, value, cu_seq_q, max_q, scale=scale)


def test_signature_detection():
    assert not varlen_accepts_scale(varlen_torch_2_9)
    assert varlen_accepts_scale(varlen_torch_2_13)
    assert VarlenFlashAttention(varlen_torch_2_9).applies_scale
    assert not VarlenFlashAttention(varlen_torch_2_13).applies_scale


@pytest.mark.parametrize("function", [varlen_torch_2_9, varlen_torch_2_13])
def test_each_varlen_signature_equals_fair_esm(make_esm2, packing, function):
    model = make_esm2(2, 32, 4, seed=12)
    sequences = ["MKTAYIAKQRQISF", "A", "GG<mask>LLP" * 5]
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(sequences)
    packed = PackedESM2(model, attention=VarlenFlashAttention(function))
    out = packed(input_ids, cu_seqlens, max_seqlen, [1, 2])
    bounds = cu_seqlens.tolist()
    for index, tokens in enumerate(parts):
        reference = packing.reference(model, tokens, [1, 2])
        for layer in (1, 2):
            mine = out[layer][bounds[index] : bounds[index + 1]]
            assert (mine - reference[layer]).abs().max().item() <= 1e-5


def test_auto_selection_on_cpu_and_refusals():
    cpu = torch.device("cpu")
    assert isinstance(select_attention("auto", cpu, torch.float32), SequenceLoopAttention)
    assert isinstance(select_attention("auto", cpu, torch.bfloat16), SequenceLoopAttention)
    assert isinstance(select_attention("sdpa", cpu, torch.float32), PaddedSDPAAttention)
    with pytest.raises(ValueError, match="needs a CUDA model in bf16 or fp16"):
        select_attention("varlen", cpu, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        select_attention("flash", cpu, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_selection_on_cuda():
    cuda = torch.device("cuda")
    assert isinstance(select_attention("auto", cuda, torch.float32), PaddedSDPAAttention)
    chosen = select_attention("auto", cuda, torch.bfloat16)
    from torch.nn.attention import varlen

    assert isinstance(chosen, VarlenFlashAttention) == hasattr(varlen, "varlen_attn")


def test_importing_the_engine_leaves_torchs_compiler_unimported():
    """A CPU run, or a command that computes nothing, does not pay for importing
    torch's compiler (about 0.9 s on a 2-core host): varlen attention, which pulls it
    in, is imported where a CUDA forward chooses it."""
    code = "import sys, virnucpro.infer.job.engine; print('torch._dynamo' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip() == "False"
