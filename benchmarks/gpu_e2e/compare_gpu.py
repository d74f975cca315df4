"""Compares a resumed run's embeddings.h5 with an uninterrupted one, and 64 random rows
with fair-esm's own fp32 forward on the same seeded random weights (650M)."""

import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from esm.data import Alphabet

from virnucpro.infer import load_model

MODEL, LAST_LAYER, SAMPLE = "esm2_t33_650M_UR50D", 33, 64


def read_fasta(path: str) -> dict[str, str]:
    sequences, name = {}, None
    with open(path) as lines:
        for line in lines:
            if line.startswith(">"):
                name = line[1:].strip()
            else:
                sequences[name] = line.strip()
    return sequences


def compare_runs(full: h5py.File, resumed: h5py.File) -> np.ndarray:
    assert list(full["ids"][:]) == list(resumed["ids"][:]), "ids differ"
    assert (full["lengths"][:] == resumed["lengths"][:]).all()
    assert (full["truncated"][:] == resumed["truncated"][:]).all()
    a, b = full["embeddings"][:], resumed["embeddings"][:]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    identical = int((a == b).all(1).sum())
    print(
        f"rows {len(a)}; resumed vs uninterrupted: identical rows {identical}, "
        f"min cosine {cosine.min():.6f}, max abs diff {np.abs(a - b).max():.3g}"
    )
    return a


@torch.no_grad()
def worst_cosine_against_fair_esm(embeddings: np.ndarray, ids: list[str], fasta: str) -> float:
    model = load_model(MODEL, random_weights=True, seed=0, device="cuda:0").model.float().eval()
    convert = Alphabet.from_architecture("ESM-1b").get_batch_converter()
    sequences = read_fasta(fasta)
    worst = 1.0
    for row in np.random.default_rng(0).choice(len(ids), SAMPLE, replace=False):
        residues = sequences[ids[row]][:1022]
        _, _, tokens = convert([(ids[row], residues)])
        out = model(tokens.cuda(), repr_layers=[LAST_LAYER])["representations"][LAST_LAYER]
        expected = out[0, 1 : len(residues) + 1].mean(0)
        got = torch.from_numpy(embeddings[row]).cuda()
        worst = min(worst, F.cosine_similarity(expected, got, dim=0).item())
    return worst


def main(full_path: str, resumed_path: str, fasta: str) -> None:
    with h5py.File(full_path) as full, h5py.File(resumed_path) as resumed:
        embeddings = compare_runs(full, resumed)
        ids = [x.decode() if isinstance(x, bytes) else x for x in full["ids"][:]]
    worst = worst_cosine_against_fair_esm(embeddings, ids, fasta)
    print(
        f"virnucpro run (bf16, compiled) vs fair-esm fp32 forward, {SAMPLE} random rows: "
        f"worst mean-embedding cosine {worst:.6f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
