"""Times variants of the packed forward alone (no loader, no pooling) on one GPU and
checks each against an fp32 forward of the same weights, to choose how `PackedESM2`
compiles. Writes one JSON object (rewritten after every variant, so a run cut short
keeps what it measured):

    python3 benchmarks/forward_variants.py --profile \\
        --out benchmarks/results/forward_variants_h200.json \\
        --plan esm2_t33_650M_UR50D=baseline,plain,tuned,max-autotune \\
        --plan esm2_t36_3B_UR50D=baseline,plain,tuned,max-autotune

Variants (all bf16, varlen attention, random seeded weights):

- `baseline`: the forward before this change (today's path): per layer one compiled
  graph before attention and one after, automatic dynamic shapes, inductor's plain
  options;
- `plain`, `tuned`: `PackedESM2(compile=True, compile_mode=...)` as shipped: the
  residual add of block i and block i+1's layer norm in one compiled step, the token
  count marked dynamic up front (one compilation); options from `packed.COMPILE_MODES`;
- `max-autotune`, `tma`, `triton-only`, `multi-kernel`: inductor options tried on the
  shipped structure (matmul autotuning of Triton templates against cuBLAS, which lets
  inductor fuse the bias and GELU into a Triton matmul's epilogue where that is faster;
  with persistent TMA templates; Triton templates only; both persistent and looped
  reductions, picked at run time), like `inductor-choices` (plain's options) without the
  packed forward's own heuristics (`virnucpro.infer.inductor_heuristics`).

Per variant: tokens/s over `--passes` timed passes of the speed set (reads-like, 60-166
aa), its ratio to `baseline` in the same run, MFU against a bf16 matmul measured in the
same run, compile seconds (warm-up time beyond what those batches take at steady
speed), and fidelity: the worst per-sequence mean-embedding cosine against the fp32
forward (tf32 off) over `--fidelity-count` sequences, at the middle and the last layer.
With `--profile`, the share of GPU time per kind of kernel over a few batches.

It swaps `PackedESM2`'s private block functions for the non-shipped variants: an
experiment, not an API.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro.data import plan_batches
from virnucpro.infer import PackedESM2, load_model
from virnucpro.infer.packed import (
    COMPILE_MODES,
    _make_block_functions,
    resolve_layers,
    rotary_tables,
)
from virnucpro.infer.packed_layout import build_layout
from virnucpro.infer.pooling import mean_over_residues

Batch = tuple[torch.Tensor, torch.Tensor, int]
BUDGETS = {"esm2_t33_650M_UR50D": 32768, "esm2_t36_3B_UR50D": 16384}
SPEED_COUNTS = {"esm2_t33_650M_UR50D": 4000, "esm2_t36_3B_UR50D": 1500}
EXPERIMENTS = {
    "max-autotune": {"max_autotune": True, "coordinate_descent_tuning": True},
    "tma": {
        "max_autotune": True,
        "coordinate_descent_tuning": True,
        "triton.enable_persistent_tma_matmul": True,
    },
    "triton-only": {
        "max_autotune": True,
        "coordinate_descent_tuning": True,
        "triton.enable_persistent_tma_matmul": True,
        "max_autotune_gemm_backends": "TRITON",
    },
    "multi-kernel": {"triton.multi_kernel": 1},
    "inductor-choices": {},
}
WARMUP_BATCHES = 4
DEVICE = "cuda:0"


def make_batches(lengths: np.ndarray, budget: int, device: torch.device, seed: int) -> list[Batch]:
    """Packed batches of random standard residues (token ids 4..23), BOS/EOS around each."""
    rng = np.random.default_rng(seed)
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


class Legacy(PackedESM2):
    """The forward before the fused step: per layer one compiled graph before attention
    and one after it (the residual add and the next layer norm are two passes),
    automatic dynamic shapes (compiled static on the first batch, again dynamic on the
    second size), inductor's plain options."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, attention="varlen")
        first = model.layers[0]
        q_scale = 1.0 if self.attention.applies_scale else first.self_attn.scaling
        eps = first.self_attn_layer_norm.eps
        project, _, finish = _make_block_functions(self.num_heads, q_scale, eps)
        self._before, self._after = torch.compile(project), torch.compile(finish)

    @torch.inference_mode()
    def __call__(self, input_ids, cu_seqlens, max_seqlen, repr_layers=(-1,)):
        wanted = resolve_layers(repr_layers, self.num_layers)
        layout = build_layout(cu_seqlens, max_seqlen, input_ids.shape[0])
        x = self._embed(input_ids, layout)
        cos, sin = rotary_tables(layout.positions, self._inv_freq)
        prepared = self.attention.prepare(layout)
        representations = {}
        for index in range(max(wanted)):
            project_weights, finish_weights = self._weights[index]
            q, k, v = self._before(x, cos, sin, *project_weights)
            attended = self.attention.attend(q, k, v, prepared)
            x = self._after(x, attended, *finish_weights)
            if index + 1 in wanted and index + 1 != self.num_layers:
                representations[index + 1] = x
        if self.num_layers in wanted:
            representations[self.num_layers] = self.model.emb_layer_norm_after(x)
        return representations


def build(model: torch.nn.Module, variant: str) -> PackedESM2:
    if variant == "baseline":
        return Legacy(model)
    if variant in COMPILE_MODES:
        return PackedESM2(model, attention="varlen", compile=True, compile_mode=variant)
    forward = PackedESM2(model, attention="varlen")
    options = EXPERIMENTS[variant]
    blocks = (forward._project, forward._step, forward._finish)
    forward._project, forward._step, forward._finish = (
        torch.compile(block, options=options) for block in blocks
    )
    forward._mark_dynamic = True
    return forward


def timed(forward: PackedESM2, batches: list[Batch], layers: list[int]) -> tuple[int, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        forward(*batch, layers)
    torch.cuda.synchronize()
    return sum(batch[0].numel() for batch in batches), time.perf_counter() - start


def flops_per_token(num_layers: int, dim: int, lengths: np.ndarray) -> float:
    """Dense layers plus attention over the token's own sequence (n in tokens)."""
    n = (lengths + 2).astype(np.float64)
    return 24 * num_layers * dim**2 + 4 * num_layers * dim * float((n * n).sum() / n.sum())


def peak_matmul_flops(size: int = 8192, repeats: int = 10) -> float:
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def mean_embeddings(forward, batches: list[Batch], layers: list[int]) -> dict[int, torch.Tensor]:
    means = defaultdict(list)
    for input_ids, cu_seqlens, max_seqlen in batches:
        out = forward(input_ids, cu_seqlens, max_seqlen, layers)
        for layer in layers:
            means[layer].append(mean_over_residues(out[layer], cu_seqlens))
    return {layer: torch.cat(parts) for layer, parts in means.items()}


def worst_cosines(means: dict, reference: dict) -> dict[str, float]:
    return {
        str(layer): round(
            F.cosine_similarity(means[layer], reference[layer], dim=-1).min().item(), 7
        )
        for layer in reference
    }


def kernel_category(name: str) -> str:
    lowered = name.lower()
    if "flash" in lowered or "fmha" in lowered:
        return "attention"
    if "triton_tem" in lowered:
        return "gemm_triton_fused" if "gelu" in lowered or "add" in lowered else "gemm_triton"
    if any(key in lowered for key in ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "matmul")):
        return "gemm_cublas"
    if lowered.startswith("triton_per") or lowered.startswith("triton_red"):
        return "norm_reduction"
    if lowered.startswith("triton_poi"):
        return "pointwise_gelu" if "gelu" in lowered or "erf" in lowered else "pointwise_other"
    return "other"


def profile(forward: PackedESM2, batches: list[Batch], layers: list[int]) -> dict:
    """Share of GPU kernel time per kind of kernel, and the largest kernels."""
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for batch in batches:
            forward(*batch, layers)
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        micros = getattr(event, "self_device_time_total", None)
        if micros is None:
            micros = event.self_cuda_time_total
        if micros > 0:
            per_kernel[event.key] += micros
    total = sum(per_kernel.values()) or 1.0
    shares: dict[str, float] = defaultdict(float)
    for name, micros in per_kernel.items():
        shares[kernel_category(name)] += micros / total
    largest = sorted(per_kernel.items(), key=lambda item: -item[1])[:12]
    return {
        "shares": {key: round(value, 4) for key, value in sorted(shares.items())},
        "largest": [[name[:140], round(micros / total, 4)] for name, micros in largest],
    }


def measure_variant(args, variant, model, speed, fidelity, layers, reference, flops, peak):
    torch._dynamo.reset()
    forward = build(model, variant)
    warm = speed[:WARMUP_BATCHES]
    warm_tokens, warm_seconds = timed(forward, warm, [layers[-1]])
    for _ in range(args.passes):
        timed(forward, speed, [layers[-1]])
    runs = [timed(forward, speed, [layers[-1]]) for _ in range(args.passes)]
    rate = statistics.median(tokens / seconds for tokens, seconds in runs)
    compile_seconds = warm_seconds - warm_tokens / rate
    result = {
        "variant": variant,
        "tokens_per_s": round(rate),
        "pass_rates": [round(tokens / seconds) for tokens, seconds in runs],
        "mfu": round(rate * flops / peak, 4),
        "compile_seconds": round(compile_seconds, 1),
        "min_mean_cosine_vs_fp32": worst_cosines(
            mean_embeddings(forward, fidelity, layers), reference
        ),
    }
    if args.profile:
        result["profile"] = profile(forward, speed[:3], [layers[-1]])
    return result


def run_model(args, name: str, variants: list[str], peak: float, report: dict, deadline: float):
    device = torch.device(DEVICE)
    budget = BUDGETS.get(name, 16384)
    model32 = load_model(name, random_weights=True, seed=0, device=device).model
    model = copy.deepcopy(model32).to(torch.bfloat16)
    last = model.num_layers
    layers = [last // 2, last]
    fidelity_lengths = np.random.default_rng(2).integers(60, 167, args.fidelity_count)
    fidelity = make_batches(fidelity_lengths, budget, device, seed=3)
    reference = mean_embeddings(PackedESM2(model32, attention="sdpa"), fidelity, layers)
    del model32
    torch.cuda.empty_cache()
    speed_lengths = np.random.default_rng(1).integers(60, 167, SPEED_COUNTS.get(name, 2000))
    speed = make_batches(speed_lengths, budget, device, seed=0)
    flops = flops_per_token(last, model.embed_dim, speed_lengths)
    entry = report["models"].setdefault(
        name,
        {
            "token_budget": budget,
            "speed_tokens": int((speed_lengths + 2).sum()),
            "fidelity_sequences": int(args.fidelity_count),
            "flops_per_token": round(flops),
            "ceiling_tokens_per_s": round(peak / flops),
            "variants": [],
        },
    )
    for variant in variants:
        if time.perf_counter() > deadline:
            entry["variants"].append({"variant": variant, "skipped": "time limit"})
            continue
        try:
            result = measure_variant(
                args, variant, model, speed, fidelity, layers, reference, flops, peak
            )
        except Exception as error:  # an experiment failing must not lose the others
            result = {"variant": variant, "error": f"{type(error).__name__}: {error}"[:600]}
        base = next((v for v in entry["variants"] if v["variant"] == "baseline"), None)
        if base and "tokens_per_s" in base and "tokens_per_s" in result:
            result["ratio_to_baseline"] = round(result["tokens_per_s"] / base["tokens_per_s"], 4)
        entry["variants"].append(result)
        brief = {key: value for key, value in result.items() if key != "profile"}
        print(json.dumps({"model": name, **brief}), file=sys.stderr, flush=True)
        write(args.out, report)


def write(path: str | None, report: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", required=True, help="MODEL=variant,variant")
    parser.add_argument("--out")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--fidelity-count", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--time-limit", type=float, default=1e9, help="seconds; skip after")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.time_limit
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    peak = peak_matmul_flops()
    report = {
        "benchmark": "forward_variants",
        "command": " ".join(["python3", *sys.argv]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_matmul_tflops": round(peak / 1e12, 1),
        "models": {},
    }
    for plan in args.plan:
        name, variants = plan.split("=")
        run_model(args, name, variants.split(","), peak, report, deadline)
        torch.cuda.empty_cache()
    report["complete"] = True
    write(args.out, report)
    for name, entry in report["models"].items():
        for result in entry["variants"]:
            brief = {key: value for key, value in result.items() if key != "profile"}
            print(json.dumps({"model": name, **brief}))


if __name__ == "__main__":
    main()
