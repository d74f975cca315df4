"""What --compression saves on embeddings, and what it costs to write: random-weight
ESM-2 8M embeddings (per-token and mean, float32 and float16) of synthetic proteins,
computed on the CPU, then written with the merge's own layout (``ckpt.storage.storage``).

    python benchmarks/bench_storage.py [--proteins 2000] [--seed 0]

Random weights on synthetic sequences: the figures show the cost of each codec on
ESM-2-shaped float data, not what trained weights on real proteins give. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from virnucpro.ckpt import open_embeddings
from virnucpro.ckpt.storage import storage
from virnucpro.infer import embed

AMINO = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def write_proteins(path: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(5.4, 0.5, count).astype(int), 30, 1022)
    path.write_text(
        "".join(
            f">p{i}\n{AMINO[rng.integers(0, 20, n)].tobytes().decode()}\n"
            for i, n in enumerate(lengths)
        )
    )


def measure(values: np.ndarray, per_token: bool, compression: str, where: Path) -> dict:
    path = where / f"{compression}.h5"
    started = time.perf_counter()
    with h5py.File(path, "w") as f:
        layout = storage(values.shape, values.dtype, compression, per_token)
        f.create_dataset("x", shape=values.shape, dtype=values.dtype, **layout)[...] = values
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    path.unlink()
    return {
        "bytes": size,
        "write_s": round(seconds, 3),
        "MB_per_s": round(values.nbytes / seconds / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        write_proteins(where / "proteins.fasta", args.proteins, args.seed)
        output = embed(
            where / "proteins.fasta",
            where / "run",
            model="esm2_t6_8M_UR50D",
            random_weights=True,
            pooling=["mean", "per-token"],
            device="cpu",
            workers=0,
        )
        report: dict = {"proteins": args.proteins, "model": "esm2_t6_8M_UR50D (random weights)"}
        with open_embeddings(output) as result:
            report["residues"] = int(result.lengths.sum())
            mean = result.mean()
        with h5py.File(output, "r") as f:
            tokens = f["layer_6/per_token"][()]
        for dtype in (np.float32, np.float16):
            for kind, values in (("mean", mean), ("per_token", tokens)):
                cast = values.astype(dtype)
                rows = {
                    c: measure(cast, kind == "per_token", c, where) for c in ("none", "lzf", "gzip")
                }
                for figures in rows.values():
                    figures["of_none"] = round(figures["bytes"] / rows["none"]["bytes"], 3)
                report[f"{np.dtype(dtype).name}/{kind}"] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
