"""Times variants of the packed forward alone (no loader, no pooling) on one GPU, to
choose how `PackedESM2` compiles: eager, compiled with every dim symbolic
(`dynamic=True`), compiled with automatic dynamic shapes (only the token count
symbolic), and both with q/k/v fused into one matmul. Prints one JSON line per variant.

    python3 benchmarks/forward_variants.py esm2_t33_650M_UR50D 32768 8000

It swaps `PackedESM2`'s private block functions: an experiment, not an API.
"""

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro.data import plan_batches
from virnucpro.infer import PackedESM2, load_model
from virnucpro.infer.packed import _apply_rotary

VARIANTS = ("eager", "compile_dyn_true", "compile_auto", "fused_eager", "fused_compile_auto")
Batch = tuple[torch.Tensor, torch.Tensor, int]


def make_batches(lengths: np.ndarray, budget: int, device: torch.device) -> list[Batch]:
    rng = np.random.default_rng(0)
    batches = []
    for plan in plan_batches(lengths, budget, max_length=1022):
        sizes = lengths[plan] + 2
        tokens = np.concatenate([[0, *rng.integers(4, 24, size - 2), 2] for size in sizes])
        cu_seqlens = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        batches.append(
            (
                torch.tensor(tokens, device=device),
                torch.tensor(cu_seqlens, device=device),
                int(sizes.max()),
            )
        )
    return batches


def fused_project(num_heads: int, q_scale: float, eps: float):
    def project(x, cos, sin, ln_w, ln_b, wqkv, bqkv):
        tokens, dim = x.shape
        h = F.layer_norm(x, (dim,), ln_w, ln_b, eps)
        q, k, v = F.linear(h, wqkv, bqkv).view(tokens, 3, num_heads, -1).unbind(1)
        return _apply_rotary(q * q_scale, cos, sin), _apply_rotary(k, cos, sin), v

    return project


def fuse_qkv(forward: PackedESM2, compiled: bool) -> None:
    first = forward.model.layers[0]
    q_scale = 1.0 if forward.attention.applies_scale else first.self_attn.scaling
    project = fused_project(forward.num_heads, q_scale, first.self_attn_layer_norm.eps)
    fused = []
    for layer, (project_weights, finish_weights) in zip(
        forward.model.layers, forward._weights, strict=True
    ):
        attn = layer.self_attn
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        fused.append(((*project_weights[:2], weight, bias), finish_weights))
    forward._weights = fused
    forward._project = torch.compile(project) if compiled else project
    if compiled:
        forward._finish = torch.compile(forward._finish)


def build(model: torch.nn.Module, variant: str) -> PackedESM2:
    forward = PackedESM2(model, attention="varlen", compile=False)
    if variant.startswith("fused"):
        fuse_qkv(forward, compiled="compile" in variant)
    elif variant != "eager":
        dynamic = True if variant == "compile_dyn_true" else None
        forward._project = torch.compile(forward._project, dynamic=dynamic)
        forward._finish = torch.compile(forward._finish, dynamic=dynamic)
    return forward


def tokens_per_second(forward: PackedESM2, batches: list[Batch], layers: list[int]) -> float:
    for batch in batches[:6]:
        forward(*batch, layers)
    torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for _ in range(2):
        for batch in batches:
            forward(*batch, layers)
            tokens += batch[0].numel()
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def main(name: str, budget: int, count: int) -> None:
    device = torch.device("cuda:0")
    model = load_model(name, random_weights=True, seed=0, device=device, dtype=torch.bfloat16).model
    lengths = np.random.default_rng(1).integers(60, 167, count)
    batches = make_batches(lengths, budget, device)
    for variant in VARIANTS:
        torch._dynamo.reset()
        rate = tokens_per_second(build(model, variant), batches, [model.num_layers])
        line = {"model": name, "budget": budget, "variant": variant, "tokens_per_s": round(rate)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
