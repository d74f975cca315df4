"""Data pipeline throughput: index time and packed-batch loader residues/s, printed as JSON.

    python benchmarks/bench_data.py --count 1000000 --lengths uniform --workers 1 2 4
    python benchmarks/bench_data.py --mode reads --read-sets 1000000:300-300 60000:250-600

Proteins: a FASTA of `--count` random proteins (`uniform`: 60-166 aa; `uniref`: log-normal
around a 260 aa median, capped at 5000) is indexed, planned into 4096-token batches and the
spawned DataLoader iterated once per worker count.

Reads: for each `COUNT:SHORTEST-LONGEST` set, a FASTA of DNA reads, each one a stretch of
sense codons read from a random offset on a random strand (so, as in real coding reads, a
frame or two survive VirNucPro's stop filter) with one base in a thousand an N. Reported: the
index pass and building every packed batch of the plan in this process (the six-frame
translation a loader worker does), as reads per wall second and per CPU second of this one
process (on a shared machine the latter is what one core does), besides the loader.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.data import (
    PackedBatchDataset,
    build_index,
    create_async_dataloader,
    packing_efficiency,
    plan_batches,
)

AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
SENSE_CODONS = np.array(
    [
        (a, b, c)
        for a in b"ACGT"
        for b in b"ACGT"
        for c in b"ACGT"
        if bytes((a, b, c)) not in (b"TAA", b"TAG", b"TGA")
    ],
    dtype=np.uint8,
)
COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")


def sample_lengths(count: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(60, 167, size=count)
    return np.clip(rng.lognormal(np.log(260), 0.6, size=count).astype(np.int64), 20, 5000)


def write_fasta(path: Path, lengths: np.ndarray, rng: np.random.Generator) -> None:
    residues = AMINO_ACIDS[rng.integers(0, len(AMINO_ACIDS), size=int(lengths.sum()))].tobytes()
    position = 0
    with open(path, "wb") as handle:
        for i, n in enumerate(lengths.tolist()):
            sequence = residues[position : position + n]
            position += n
            lines = b"\n".join(sequence[j : j + 60] for j in range(0, n, 60))
            handle.write(b">seq%d\n%s\n" % (i, lines))


def write_reads(path: Path, lengths: np.ndarray, rng: np.random.Generator) -> None:
    codons = SENSE_CODONS[rng.integers(0, len(SENSE_CODONS), size=int(lengths.sum()) // 3 + 4)]
    bases = codons.reshape(-1)
    bases[rng.random(len(bases)) < 0.001] = ord("N")
    stream = bases.tobytes()
    offsets = rng.integers(0, 3, size=len(lengths))
    reverse = rng.random(len(lengths)) < 0.5
    position = 0
    with open(path, "wb") as handle:
        for i, (n, shift, flip) in enumerate(
            zip(lengths.tolist(), offsets.tolist(), reverse.tolist(), strict=True)
        ):
            read = stream[position + shift : position + shift + n]
            position += n
            if flip:
                read = read.translate(COMPLEMENT)[::-1]
            handle.write(b">read%d\n%s\n" % (i, read))


def timed(work) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time
    is what one core spends, whatever else runs beside it."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def build_all_batches(index, batches) -> None:
    """Build every packed batch of the plan in this process."""
    for _ in PackedBatchDataset(index, batches):
        pass


def reads_set(spec: str, folder: Path, token_budget: int, workers: list[int]) -> dict:
    count, span = spec.split(":")
    shortest, longest = (int(n) for n in span.split("-"))
    rng = np.random.default_rng(0)
    lengths = rng.integers(shortest, longest + 1, size=int(count))
    path = folder / f"reads_{spec.replace(':', '_')}.fasta"
    write_reads(path, lengths, rng)
    index, index_seconds, index_cpu = timed(
        lambda: build_index([path], input_type="dna", chunk_size=300)
    )
    batches = plan_batches(index.lengths, token_budget)
    _, build_seconds, build_cpu = timed(lambda: build_all_batches(index, batches))
    reads = len(lengths)
    return {
        "reads": reads,
        "read_lengths": f"{shortest}-{longest}",
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "proteins": len(index),
        "chunks": index.chunks,
        "chunks_without_protein": index.chunks_without_protein,
        "index_seconds": round(index_seconds, 2),
        "index_reads_per_s": round(reads / index_seconds),
        "index_reads_per_cpu_s": round(reads / index_cpu),
        "batches": len(batches),
        "batch_build_seconds": round(build_seconds, 2),
        "batch_build_reads_per_s": round(reads / build_seconds),
        "batch_build_reads_per_cpu_s": round(reads / build_cpu),
        "loader": [loader_throughput(index, batches, w) for w in workers],
    }


def loader_throughput(index, batches, workers: int) -> dict:
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches), batch_size=None, num_workers=workers, prefetch_factor=4
    )
    iterator = iter(loader)
    first = next(iterator)
    residues = int(first["lengths"].sum())
    start = time.perf_counter()
    for batch in iterator:
        residues += int(batch["lengths"].sum())
    seconds = time.perf_counter() - start
    measured = residues - int(first["lengths"].sum())
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "residues_per_s": round(measured / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["protein", "reads"], default="protein")
    parser.add_argument("--read-sets", nargs="+", default=["1000000:300-300", "60000:250-600"])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--lengths", choices=["uniform", "uniref"], default="uniform")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--token-budget", type=int, default=4096)
    args = parser.parse_args()
    if args.mode == "reads":
        with tempfile.TemporaryDirectory() as folder:
            sets = [
                reads_set(spec, Path(folder), args.token_budget, args.workers)
                for spec in args.read_sets
            ]
        environment = {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "python": platform.python_version(),
        }
        print(json.dumps({"mode": "reads", "sets": sets, **environment}, indent=2))
        return
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.fasta"
        lengths = sample_lengths(args.count, args.lengths, rng)
        write_fasta(path, lengths, rng)
        start = time.perf_counter()
        index = build_index([path])
        index_seconds = time.perf_counter() - start
        start = time.perf_counter()
        batches = plan_batches(index.lengths, args.token_budget)
        plan_seconds = time.perf_counter() - start
        result = {
            "count": args.count,
            "lengths": args.lengths,
            "residues": int(index.lengths.sum()),
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "index_seconds": round(index_seconds, 2),
            "plan_seconds": round(plan_seconds, 2),
            "batches": len(batches),
            "packing_efficiency": round(
                packing_efficiency(batches, index.lengths, args.token_budget), 4
            ),
            "loader": [loader_throughput(index, batches, w) for w in args.workers],
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
