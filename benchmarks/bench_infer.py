"""ESM-2 inference speed on one GPU: fair-esm's extract way against the packed runner, as JSON.

    python benchmarks/bench_infer.py --out benchmarks/results/infer_h100.json
    python benchmarks/bench_infer.py --quick --device cpu      # smoke run, 8M model

For each model (random weights, seeded) and each generated length set (`reads`: 60-166 aa
uniform, the six-frame translations of 300 bp reads; `uniref`: log-normal, median 260 aa,
clipped to 30..1022) it times, on the same sequences:

- `fair_esm`: fair-esm's own `ESM2.forward` in fp32 on length-sorted padded batches of at
  most 4096 tokens (`FastaBatchedDataset.get_batch_indices(4096, extra_toks_per_seq=1)` and
  the alphabet's batch converter, as extract.py), last layer, the full representation moved
  to the host and mean-pooled there per sequence, as extract.py does;
- `packed_eager` / `packed_compiled`: `plan_batches` under a token budget, packed batches
  fed to `AsyncInferenceRunner` running `PackedESM2` on the bf16 model (varlen attention on
  CUDA), mean pooling on the device; compiled with `torch.compile`, compilation happening
  on the warm-up batches, which are never timed.

Tokens are real tokens (residues plus BOS and EOS), the same count for every way. MFU is
achieved FLOP/s over peak bf16 FLOP/s, forward FLOPs per token being 24*L*d^2 plus
attention 4*L*d*S, S the token-weighted mean sequence length (sum n^2 / sum n, n in
tokens); the peak is a large bf16 matmul measured in the same run (median of several),
and MFU is also given against the datasheet peak (`--datasheet-tflops`, 989 for an H100
SXM). Progress goes to stderr; with `--out` the JSON is rewritten after every
measurement (`"complete": false` until the end), so a run cut short keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import esm
import numpy as np
import torch
from esm.data import FastaBatchedDataset

from virnucpro.data import pack_residues, packing_efficiency, plan_batches, sequence_costs
from virnucpro.infer import ATTENTION_BACKENDS, ESM2_ARCHITECTURES, PackedESM2, load_model
from virnucpro.infer.runner import AsyncInferenceRunner

AMINO_ACIDS = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)
SET_SEEDS = {"reads": 1, "uniref": 2}
WARMUP_SEED_OFFSET = 100
FAIR_ESM_TOKENS_PER_BATCH = 4096
TRUNCATION = 1022
REFERENCE_MODEL = "esm2_t33_650M_UR50D"
DEFAULT_BUDGETS = {"esm2_t33_650M_UR50D": 32768, "esm2_t36_3B_UR50D": 16384}
FALLBACK_BUDGET = 16384
WAYS = ("fair_esm", "packed_eager", "packed_compiled")
QUICK = {
    "models": ["esm2_t6_8M_UR50D"],
    "tokens": 3000,
    "token_budget": 1024,
    "warmup_batches": 1,
    "matmul_size": 512,
}


def sample_lengths(kind: str, count: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "reads":
        return rng.integers(60, 167, size=count)
    return np.clip(rng.lognormal(np.log(260), 0.6, size=count), 30, TRUNCATION).astype(np.int64)


def generate_set(kind: str, tokens: int, seed: int) -> list[bytes]:
    """Random proteins of the set's length distribution, adding up to at least `tokens`
    real tokens; any prefix of the list follows the same distribution."""
    rng = np.random.default_rng(seed)
    lengths = sample_lengths(kind, tokens // 32 + 1, rng)
    count = int(np.searchsorted(np.cumsum(lengths + 2), tokens)) + 1
    lengths = lengths[:count]
    residues = AMINO_ACIDS[rng.integers(0, len(AMINO_ACIDS), size=int(lengths.sum()))].tobytes()
    ends = np.cumsum(lengths).tolist()
    return [residues[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]


def prefix_with_tokens(sequences: list[bytes], tokens: int) -> list[bytes]:
    costs = np.cumsum([len(s) + 2 for s in sequences])
    return sequences[: int(np.searchsorted(costs, tokens)) + 1]


def residue_lengths(sequences: Sequence[bytes]) -> np.ndarray:
    return np.array([len(s) for s in sequences], dtype=np.int64)


def token_lengths(sequences: Sequence[bytes]) -> np.ndarray:
    """Real tokens of each sequence: residues (truncated as fair-esm does) plus BOS and EOS."""
    return sequence_costs(residue_lengths(sequences), TRUNCATION)


def flops_per_token(num_layers: int, embed_dim: int, sequences: Sequence[bytes]) -> float:
    """Forward FLOPs per real token: dense layers plus attention over its own sequence."""
    n = token_lengths(sequences).astype(np.float64)
    attended = float((n * n).sum() / n.sum())
    return 24 * num_layers * embed_dim**2 + 4 * num_layers * embed_dim * attended


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure_peak_flops(device: torch.device, size: int, repeats: int = 10) -> dict:
    """bf16 matmul FLOP/s of this device: median of `repeats` timed size^3 products."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    flops_per_s = 2 * size**3 / statistics.median(seconds)
    return {
        "size": size,
        "repeats": repeats,
        "flops_per_s": round(flops_per_s),
        "tflops": round(flops_per_s / 1e12, 1),
    }


def rates(tokens: int, seconds: float, flops: float, peak: float, datasheet: float) -> dict:
    per_s = tokens / seconds
    return {
        "tokens_per_s": round(per_s),
        "mfu": round(per_s * flops / peak, 4),
        "mfu_datasheet": round(per_s * flops / datasheet, 4),
    }


def time_fair_esm(model, device: torch.device, sequences: list[bytes], warmup: int) -> dict:
    """extract.py's loop: sorted padded batches, fp32 forward, host-side mean per sequence.
    Warm-up runs the longest batches (the allocator's largest blocks) untimed."""
    converter = esm.Alphabet.from_architecture("ESM-1b").get_batch_converter(TRUNCATION)
    dataset = FastaBatchedDataset(
        [f"s{i}" for i in range(len(sequences))], [s.decode() for s in sequences]
    )
    batches = dataset.get_batch_indices(FAIR_ESM_TOKENS_PER_BATCH, extra_toks_per_seq=1)
    last = model.num_layers

    def run(batch_list: list[list[int]]) -> int:
        means = []
        with torch.no_grad():
            for batch in batch_list:
                _, strs, toks = converter([dataset[i] for i in batch])
                toks = toks.to(device=device, non_blocking=True)
                out = model(toks, repr_layers=[last], return_contacts=False)
                representation = out["representations"][last].to(device="cpu")
                for i, text in enumerate(strs):
                    means.append(representation[i, 1 : min(TRUNCATION, len(text)) + 1].mean(0))
        return len(means)

    run(batches[-warmup:])
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    pooled = run(batches)
    synchronize(device)
    seconds = time.perf_counter() - start
    if pooled != len(sequences):
        raise RuntimeError(f"fair-esm way pooled {pooled} of {len(sequences)} sequences")
    return {
        "sequences": len(sequences),
        "tokens": int(token_lengths(sequences).sum()),
        "batches": len(batches),
        "seconds": round(seconds, 3),
        "peak_memory_gb": peak_memory_gb(device),
    }


def packed_loader(sequences: list[bytes], plan: list[np.ndarray]) -> Iterator[dict]:
    """Packed batches built on the fly in the main thread (the runner stages the next one
    while the device computes the current one)."""
    for batch in plan:
        chosen = batch.tolist()
        yield pack_residues([sequences[i] for i in chosen], [f"s{i}" for i in chosen], batch)


def time_packed(
    runner: AsyncInferenceRunner,
    device: torch.device,
    sequences: list[bytes],
    warmup_sequences: list[bytes],
    budget: int,
    warmup: int,
) -> dict:
    """Warm-up batches (compilation, allocator) from a separate set, then the timed run."""
    warmup_plan = plan_batches(residue_lengths(warmup_sequences), budget, TRUNCATION)[:warmup]
    synchronize(device)
    start = time.perf_counter()
    for _ in runner.run(packed_loader(warmup_sequences, warmup_plan)):
        pass
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    lengths = residue_lengths(sequences)
    plan = plan_batches(lengths, budget, TRUNCATION)
    synchronize(device)
    start = time.perf_counter()
    pooled = sum(result.num_sequences for result in runner.run(packed_loader(sequences, plan)))
    synchronize(device)
    seconds = time.perf_counter() - start
    stats = runner.get_statistics()
    if pooled != len(sequences) or stats["oom_splits"]:
        raise RuntimeError(
            f"packed way pooled {pooled} of {len(sequences)} sequences with "
            f"{stats['oom_splits']} out-of-memory splits: lower --token-budget"
        )
    return {
        "sequences": len(sequences),
        "tokens": stats["total_tokens"],
        "batches": len(plan),
        "token_budget": budget,
        "packing_efficiency": round(packing_efficiency(plan, lengths, budget, TRUNCATION), 4),
        "seconds": round(seconds, 3),
        "data_wait_s": round(stats["data_wait_s"], 3),
        "warmup_batches": len(warmup_plan),
        "warmup_seconds": round(warmup_seconds, 2),
        "peak_memory_gb": peak_memory_gb(device),
    }


class Report:
    """The JSON being built; rewritten to `--out` after every measurement."""

    def __init__(self, header: dict, out: Path | None):
        self.data = {**header, "complete": False, "models": {}}
        self.out = out
        self.started = time.perf_counter()

    def save(self, complete: bool = False) -> None:
        self.data["complete"] = complete
        self.data["total_seconds"] = round(time.perf_counter() - self.started, 1)
        if self.out is not None:
            self.out.write_text(json.dumps(self.data, indent=2) + "\n")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModelBench:
    """One model's measurements: its generated sets, then each way on each set."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, report: Report):
        started = time.perf_counter()
        loaded = load_model(name, random_weights=True, seed=args.seed, device=device)
        synchronize(device)
        self.name, self.args, self.device, self.report = name, args, device, report
        self.model = loaded.model
        self.num_layers, self.embed_dim = loaded.num_layers, loaded.embed_dim
        self.budget = args.token_budget or DEFAULT_BUDGETS.get(name, FALLBACK_BUDGET)
        self.targets = measurement_tokens(args, self.num_layers, self.embed_dim)
        self.peak = report.data["peak_bf16_matmul"]["flops_per_s"]
        self.entry = {
            "num_layers": self.num_layers,
            "embed_dim": self.embed_dim,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "build_seconds": round(time.perf_counter() - started, 2),
            "token_targets": self.targets,
            "sets": {},
        }
        report.data["models"][name] = self.entry
        self.sets, self.warmups = {}, {}
        for kind in args.sets:
            seed = args.seed + SET_SEEDS[kind]
            self.sets[kind] = generate_set(kind, max(self.targets.values()), seed)
            warmup_tokens = self.budget * args.warmup_batches * 2
            self.warmups[kind] = generate_set(kind, warmup_tokens, seed + WARMUP_SEED_OFFSET)
            flops = flops_per_token(self.num_layers, self.embed_dim, self.sets[kind])
            self.entry["sets"][kind] = {
                "ceiling_tokens_per_s": round(self.peak / flops),
                "ways": {},
            }

    def run(self) -> None:
        """fair-esm's way first (the fp32 model), then the packed ways on the same weights
        cast to bf16 in place."""
        if "fair_esm" in self.args.ways:
            for kind in self.args.sets:
                chosen = prefix_with_tokens(self.sets[kind], self.targets["fair_esm"])
                measured = time_fair_esm(self.model, self.device, chosen, self.args.warmup_batches)
                self.record(kind, "fair_esm", measured, chosen)
        self.model.to(torch.bfloat16)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for way in ("packed_eager", "packed_compiled"):
            if way in self.args.ways:
                self.run_packed(way)
        for kind in self.args.sets:
            add_ratios(self.entry["sets"][kind])
        self.report.save()

    def run_packed(self, way: str) -> None:
        forward = PackedESM2(
            self.model, attention=self.args.attention, compile=way == "packed_compiled"
        )
        runner = AsyncInferenceRunner(forward, self.device, [self.num_layers], ("mean",))
        self.entry["attention"] = forward.attention.name
        for kind in self.args.sets:
            chosen = prefix_with_tokens(self.sets[kind], self.targets["packed"])
            measured = time_packed(
                runner,
                self.device,
                chosen,
                self.warmups[kind],
                self.budget,
                self.args.warmup_batches,
            )
            self.record(kind, way, measured, chosen)

    def record(self, kind: str, way: str, measured: dict, sequences: list[bytes]) -> None:
        flops = flops_per_token(self.num_layers, self.embed_dim, sequences)
        datasheet = self.args.datasheet_tflops * 1e12
        measured.update(rates(measured["tokens"], measured["seconds"], flops, self.peak, datasheet))
        measured["flops_per_token"] = round(flops)
        self.entry["sets"][kind]["ways"][way] = measured
        progress(f"{self.name} {kind} {way}: {measured['tokens_per_s']} tokens/s")
        self.report.save()


def measurement_tokens(args: argparse.Namespace, num_layers: int, embed_dim: int) -> dict:
    """Token targets of one model: `--tokens` for the fair-esm way on 650M, times
    `--packed-factor` for the packed ways; a larger model gets fewer tokens, in the ratio
    of dense FLOPs per token, so its measurements take about as long as 650M's."""
    reference = ESM2_ARCHITECTURES[REFERENCE_MODEL]
    ratio = min(1.0, reference.num_layers * reference.embed_dim**2 / (num_layers * embed_dim**2))
    fair = max(1, round(args.tokens * ratio))
    return {"fair_esm": fair, "packed": max(1, round(fair * args.packed_factor))}


def add_ratios(set_entry: dict) -> None:
    ways = set_entry["ways"]
    if "fair_esm" not in ways:
        return
    baseline = ways["fair_esm"]["tokens_per_s"]
    for way in ("packed_eager", "packed_compiled"):
        if way in ways:
            set_entry[f"ratio_{way}"] = round(ways[way]["tokens_per_s"] / baseline, 2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(ESM2_ARCHITECTURES),
        metavar="MODEL",
        help="ESM-2 names (default: esm2_t33_650M_UR50D esm2_t36_3B_UR50D)",
    )
    parser.add_argument("--sets", nargs="+", default=list(SET_SEEDS), choices=list(SET_SEEDS))
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    parser.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="real tokens per fair-esm measurement on 650M (default 1000000); "
        "scaled down for larger models by FLOPs per token",
    )
    parser.add_argument(
        "--packed-factor",
        type=float,
        default=3.0,
        help="the packed ways measure this many times the fair-esm way's tokens",
    )
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="packed batch budget for every model (default: 32768 for 650M, 16384 otherwise)",
    )
    parser.add_argument("--warmup-batches", type=int, default=None, help="default 3")
    parser.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto")
    parser.add_argument("--matmul-size", type=int, default=None, help="peak matmul (8192)")
    parser.add_argument("--datasheet-tflops", type=float, default=989.0)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: esm2_t6_8M_UR50D, a few thousand tokens (use with --device cpu)",
    )
    args = parser.parse_args(argv)
    defaults = (
        QUICK
        if args.quick
        else {
            "models": ["esm2_t33_650M_UR50D", "esm2_t36_3B_UR50D"],
            "tokens": 1_000_000,
            "token_budget": None,
            "warmup_batches": 3,
            "matmul_size": 8192,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU, or pass --quick --device cpu")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    header = {
        "benchmark": "infer",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fair_esm": getattr(esm, "__version__", None),
        "fp32_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "random_weights": True,
        "seed": args.seed,
        "fair_esm_tokens_per_batch": FAIR_ESM_TOKENS_PER_BATCH,
        "datasheet_bf16_tflops": args.datasheet_tflops,
        "peak_bf16_matmul": measure_peak_flops(device, args.matmul_size),
    }
    report = Report(header, args.out)
    progress(f"peak bf16 matmul: {header['peak_bf16_matmul']['tflops']} TFLOP/s")
    for name in args.models:
        ModelBench(name, args, device, report).run()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.save(complete=True)
    print(json.dumps(report.data, indent=2))


if __name__ == "__main__":
    main()
