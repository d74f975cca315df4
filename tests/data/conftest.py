"""Shared helpers: write FASTA files (wrapped, CRLF, gzip) into fresh temporary folders."""

import gzip
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def _fasta_text(records: Sequence[tuple[str, str]], wrap: int, newline: str) -> str:
    lines = []
    for name, sequence in records:
        lines.append(f">{name} some description")
        step = wrap or max(1, len(sequence))
        lines.extend(sequence[i : i + step] for i in range(0, len(sequence), step))
    return newline.join(lines) + newline


@pytest.fixture
def write_fasta(tmp_path_factory) -> Callable[..., Path]:
    """write_fasta(records, name=, wrap=60, newline='\\n', gz=False) -> path in a fresh folder."""

    def write(
        records: Sequence[tuple[str, str]],
        name: str = "input.fasta",
        wrap: int = 60,
        newline: str = "\n",
        gz: bool = False,
    ) -> Path:
        path = tmp_path_factory.mktemp("fasta") / name
        data = _fasta_text(records, wrap, newline).encode()
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


@pytest.fixture
def random_proteins() -> Callable[[int, int, int, int], list[tuple[str, str]]]:
    """random_proteins(count, shortest, longest, seed) -> [(id, sequence)]."""

    def make(count: int, shortest: int = 5, longest: int = 300, seed: int = 0):
        rng = random.Random(seed)
        return [
            (f"p{i}", "".join(rng.choices(AMINO_ACIDS, k=rng.randint(shortest, longest))))
            for i in range(count)
        ]

    return make
