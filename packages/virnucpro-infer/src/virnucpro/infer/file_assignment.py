"""Static split of FASTA files over workers, balanced by sequence count."""

from __future__ import annotations

import gzip
import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path


def count_sequences(path: str | Path) -> int:
    """Records in a plain or gzip FASTA file (lines starting with '>')."""
    path = Path(path)
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.startswith(b">"))


def assign_files_by_size(
    files: Sequence[str | Path],
    num_workers: int,
    counts: Mapping[str | Path, int] | None = None,
) -> list[list[str | Path]]:
    """One list of files per worker, greedy by sequence count: largest file first, each
    to the least loaded worker (ties: lowest worker). The loads then differ by at most
    the largest file's count. `counts` skips reading the files when already known."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    sizes = {f: (counts[f] if counts is not None else count_sequences(f)) for f in files}
    order = sorted(files, key=lambda f: -sizes[f])
    loads = [(0, worker) for worker in range(num_workers)]
    assignment: list[list[str | Path]] = [[] for _ in range(num_workers)]
    for file in order:
        load, worker = heapq.heappop(loads)
        assignment[worker].append(file)
        heapq.heappush(loads, (load + sizes[file], worker))
    return assignment
