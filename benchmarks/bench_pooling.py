"""Mean pooling of real-size packed batches: the shipped segment sums against the float64
prefix sum along the tokens that virnucpro-infer 0.3.1 used, on one GPU, as JSON.

    python3 benchmarks/bench_pooling.py > benchmarks/results/pooling_h200.json

Per batch shape (the auto token budget's 262,144 tokens at 650M's width, 3B's half
budget at its width, and a 32K batch): milliseconds per call (CUDA events, mean of 5
after a warm-up) and the largest difference from an exact per-sequence float64 mean.
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise

import torch

from virnucpro.infer.pooling import mean_over_residues

SHAPES = ((1280, 262_144), (2560, 131_072), (1280, 32_768))


def prefix_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """virnucpro-infer 0.3.1's mean: one float64 prefix sum along the tokens (torch scans
    a non-innermost dimension with one thread per column)."""
    starts = cu_seqlens[:-1].long()
    ends = cu_seqlens[1:].long()
    prefix = torch.cumsum(hidden.to(torch.float64), dim=0)
    sums = prefix.index_select(0, ends - 2) - prefix.index_select(0, starts)
    counts = (ends - starts - 2).clamp(min=1).to(torch.float64)
    return (sums / counts.unsqueeze(1)).to(torch.float32)


def exact_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    bounds = cu_seqlens.tolist()
    rows = [hidden[a + 1 : b - 1].double().mean(0) for a, b in pairwise(bounds)]
    return torch.stack(rows).float()


def milliseconds(function, *args, repeats: int = 5) -> float:
    function(*args)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        function(*args)
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def reads_like_batch(dim: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(62, 169, (tokens // 60,), generator=generator)
    lengths = lengths[: int((torch.cumsum(lengths, 0) <= tokens).sum())]
    cu_seqlens = torch.cat((torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)))
    hidden = torch.randn(int(cu_seqlens[-1]), dim, generator=generator) + 0.5
    return hidden.to("cuda", torch.bfloat16), cu_seqlens.to("cuda", torch.int32)


def main() -> None:
    report = {"benchmark": "bench_pooling", "device": torch.cuda.get_device_name(), "batches": []}
    for dim, tokens in SHAPES:
        hidden, cu_seqlens = reads_like_batch(dim, tokens)
        exact = exact_mean(hidden, cu_seqlens)
        row: dict = {"tokens": hidden.shape[0], "sequences": cu_seqlens.numel() - 1, "dim": dim}
        for name, function in (("segments", mean_over_residues), ("prefix_0.3.1", prefix_mean)):
            error = (function(hidden, cu_seqlens) - exact).abs().max().item()
            seconds = milliseconds(function, hidden, cu_seqlens)
            row[name] = {"ms": round(seconds, 3), "max_abs_err": error}
        row["speedup"] = round(row["prefix_0.3.1"]["ms"] / row["segments"]["ms"], 1)
        report["batches"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
