"""ESM-2's fc1 with its exact-erf GELU in a Triton GEMM's epilogue, against the shipped
path (cuBLAS bias GEMM, then inductor's GELU kernel) and cuBLAS alone, on one GPU, as JSON.

    python3 benchmarks/fc1_gelu_triton.py > benchmarks/results/fc1_gelu_triton_h200.json

An experiment, not shipped: on an H200 (Triton 3.6) the best fused kernel (persistent,
TMA descriptors, 128x256x64 tiles, split epilogue) took 0.779 ms for 650M's fc1 on 32,768
tokens, the shipped path 0.780 ms and cuBLAS's GEMM alone 0.551 ms: Triton's GEMM is
about 40% slower than cuBLAS's, which costs what the fused GELU saves (0.23 ms). Two
kernel shapes are searched over a few launch configurations: pointer loads, one tile per
program; and a persistent grid over TMA descriptors (warp-specialised too, which does not
compile for Hopper with Triton 3.6). Errors are against fp32 GEMM + GELU of the same
bf16 inputs. The figures in `results/fc1_gelu_triton_h200.json` came from this script's
first form (the same kernels and configurations, written inline); this form is not yet
run on a GPU.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

SHAPES = ((32768, 1280, 5120), (31877, 1280, 5120), (16384, 2560, 10240))
"""(tokens, width, fc1 width): 650M at a 32K batch, an odd token count, 3B at 16K."""
POINTER_CONFIGS = [
    (128, 256, 64, 3, 8),
    (128, 128, 64, 4, 4),
    (128, 256, 64, 4, 8),
    (256, 128, 64, 3, 8),
    (128, 128, 64, 4, 8),
    (128, 256, 32, 4, 8),
]
"""(block m, block n, block k, stages, warps)"""
PERSISTENT_TILES = [
    (128, 256, 64, 3, 8),
    (128, 256, 64, 4, 8),
    (128, 128, 64, 4, 4),
    (128, 128, 64, 4, 8),
    (128, 128, 128, 3, 8),
    (256, 128, 64, 3, 8),
]
GROUP_M = 8


@triton.jit
def _gelu_erf(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _tile_of(tile, num_m, num_n, GROUP: tl.constexpr):
    in_group = GROUP * num_n
    first = (tile // in_group) * GROUP
    size = min(num_m - first, GROUP)
    return first + (tile % in_group) % size, (tile % in_group) // size


@triton.jit
def linear_gelu_pointers(
    a_ptr, w_ptr, bias_ptr, c_ptr, M, N, K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    inner = tl.arange(0, BK)
    a_ptrs = a_ptr + (rows[:, None] % M) * K + inner[None, :]
    w_ptrs = w_ptr + (cols[None, :] % N) * K + inner[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K // BK):
        acc = tl.dot(tl.load(a_ptrs), tl.load(w_ptrs), acc)
        a_ptrs += BK
        w_ptrs += BK
    bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    out = _gelu_erf(acc + bias[None, :]).to(c_ptr.dtype.element_ty)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], out, mask=mask)


@triton.jit
def linear_gelu_persistent(
    a_desc, w_desc, c_desc, bias_ptr, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
    SPLIT_EPILOGUE: tl.constexpr, NUM_SMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    FLATTEN: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    # The epilogue's tile is counted apart, so a flattened loop does not tie it to the
    # next tile's loads.
    tile_out = start - NUM_SMS
    for tile in tl.range(
        start, num_m * num_n, NUM_SMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE
    ):
        pid_m, pid_n = _tile_of(tile, num_m, num_n, GROUP)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for step in range(tl.cdiv(K, BK)):
            a = a_desc.load([pid_m * BM, step * BK])
            w = w_desc.load([pid_n * BN, step * BK])
            acc = tl.dot(a, w.T, acc)
        tile_out += NUM_SMS
        pid_m, pid_n = _tile_of(tile_out, num_m, num_n, GROUP)
        cols = pid_n * BN + tl.arange(0, BN)
        bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        out = _gelu_erf(acc + bias[None, :])
        if SPLIT_EPILOGUE:
            halves = tl.permute(tl.reshape(out, (BM, 2, BN // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            c_desc.store([pid_m * BM, pid_n * BN], left.to(tl.bfloat16))
            c_desc.store([pid_m * BM, pid_n * BN + BN // 2], right.to(tl.bfloat16))
        else:
            c_desc.store([pid_m * BM, pid_n * BN], out.to(tl.bfloat16))


def run_pointers(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, config: tuple) -> torch.Tensor:
    (m, k), n = x.shape, w.shape[0]
    bm, bn, bk, stages, warps = config
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    linear_gelu_pointers[grid](
        x, w, b, out, m, n, k, bm, bn, bk, GROUP_M, num_stages=stages, num_warps=warps
    )
    return out


def run_persistent(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, config: tuple
) -> torch.Tensor:
    (m, k), n = x.shape, w.shape[0]
    bm, bn, bk, stages, warps, split, warp_specialize, flatten = config
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    a_desc = TensorDescriptor.from_tensor(x, [bm, bk])
    w_desc = TensorDescriptor.from_tensor(w, [bn, bk])
    c_desc = TensorDescriptor.from_tensor(out, [bm, bn // 2 if split else bn])
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    grid = (min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    linear_gelu_persistent[grid](
        a_desc, w_desc, c_desc, b, m, n, k, bm, bn, bk, GROUP_M, split, sms,
        warp_specialize, flatten, num_stages=stages, num_warps=warps,
    )  # fmt: skip
    return out


def milliseconds(function: Callable[[], object], repeats: int = 30) -> float:
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        function()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def candidates() -> list[tuple[str, Callable, tuple]]:
    found: list[tuple[str, Callable, tuple]] = [
        (f"pointers{c}", run_pointers, c) for c in POINTER_CONFIGS
    ]
    for tile in PERSISTENT_TILES:
        for split in (False, True):
            for warp_specialize, flatten in ((False, True), (False, False), (True, False)):
                config = (*tile, split, warp_specialize, flatten)
                found.append((f"persistent{config}", run_persistent, config))
    return found


def measure_shape(tokens: int, width: int, hidden: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, width, device="cuda", dtype=torch.bfloat16) / width**0.5
    b = torch.randn(hidden, device="cuda", dtype=torch.bfloat16) * 0.1
    flops = 2 * tokens * hidden * width
    exact = F.gelu(F.linear(x.float(), w.float(), b.float()))
    shipped = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b)))
    row: dict = {"tokens": tokens, "width": width, "hidden": hidden}
    row["cublas_linear_ms"] = milliseconds(lambda: F.linear(x, w, b))
    row["shipped_linear_gelu_ms"] = milliseconds(lambda: shipped(x, w, b))
    error = (shipped(x, w, b).float() - exact).abs()
    row["shipped_error"] = {"max": error.max().item(), "mean": error.mean().item()}
    variants: dict = {}
    for name, run, config in candidates():
        try:
            error = (run(x, w, b, config).float() - exact).abs()
            ms = milliseconds(lambda run=run, config=config: run(x, w, b, config))
            variants[name] = {
                "ms": round(ms, 4),
                "tflops": round(flops / ms / 1e9, 1),
                "max_err": error.max().item(),
                "mean_err": error.mean().item(),
            }
        except Exception as failure:  # a configuration that does not compile is a result
            variants[name] = {"error": f"{type(failure).__name__}: {str(failure)[:200]}"}
    timed = {name: v for name, v in variants.items() if "ms" in v}
    best = min(timed, key=lambda name: timed[name]["ms"]) if timed else None
    row.update(best=best, best_ms=timed[best]["ms"] if best else None, variants=variants)
    row["cublas_tflops"] = round(flops / row["cublas_linear_ms"] / 1e9, 1)
    return row


def main() -> None:
    report: dict = {
        "benchmark": "fc1_gelu_triton",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shapes": [],
    }
    for shape in SHAPES:
        row = measure_shape(*shape)
        report["shapes"].append(row)
        summary = {k: v for k, v in row.items() if k != "variants"}
        print(json.dumps(summary), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
