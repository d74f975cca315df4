"""How fast checksums are checked on N threads: sha256 of files in the page cache, read
with the checkpoint check's own raw reader (os.preadv into one reused buffer), as JSON.

    python3 benchmarks/bench_hash_threads.py > benchmarks/results/hash_threads_h200.json
    python3 benchmarks/bench_hash_threads.py --files 2          # smoke run, 1.3 GB

Writes `--files` files (default 24) of 671 MB, each the size of one 650M per-token
float16 checkpoint of 262,144 tokens (16 GB for 24: it needs as much free disk and page
cache), to a temporary folder, then hashes them on 1, 4, 8, 12 and 16 threads.
`ckpt.checkpoint_file.HASH_THREADS` was chosen from these figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from virnucpro.ckpt.checkpoint_file import read_range

ROWS, WIDTH = 262_144, 1280


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for piece in read_range(handle, 0, path.stat().st_size):
            digest.update(piece)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    files = parser.parse_args().files
    values = np.random.default_rng(0).standard_normal((ROWS, WIDTH), dtype=np.float32)
    data = values.astype(np.float16).tobytes()
    report: dict = {"benchmark": "bench_hash_threads", "cpus": os.cpu_count()}
    report["openssl"] = ssl.OPENSSL_VERSION
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{i}.bin" for i in range(files)]
        for path in paths:
            path.write_bytes(data)
        report["gb"] = round(files * len(data) / 1e9, 2)
        for threads in (1, 4, 8, 12, 16):
            items = paths[:2] if threads == 1 else paths
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(sha256_of, items))
            seconds = time.perf_counter() - started
            report[f"threads_{threads}_GBps"] = round(len(items) * len(data) / seconds / 1e9, 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
