"""ESM-2 tokens without fair-esm: a 256-entry byte table equal to fair-esm's ESM-1b alphabet.

`ESM1B_TOKENS[b]` is what `esm.Alphabet.from_architecture("ESM-1b").get_idx(chr(b))` gives for
every byte value `b`: the 27 residue characters map to 4..30 and everything else to `<unk>`.
Lower case is `<unk>` in fair-esm, which is why the readers upper-case residues first.
fair-esm's `batch_converter` raises `KeyError` on a character outside the alphabet; this table
maps it to `<unk>` as `Alphabet.get_idx` does, and the readers count such residues.
Each byte is one residue, so a non-ASCII character is one `<unk>` per byte of its UTF-8 form.
"""

import numpy as np

BOS_IDX = 0
PAD_IDX = 1
EOS_IDX = 2
UNK_IDX = 3
MASK_IDX = 32

RESIDUE_CHARACTERS = b"LAGVSERTIDPKQNFYMHWCXBUZO.-"
"""fair-esm's ESM-1b standard tokens, in token order from id 4."""


def _build_table() -> np.ndarray:
    table = np.full(256, UNK_IDX, dtype=np.int64)
    table[np.frombuffer(RESIDUE_CHARACTERS, dtype=np.uint8)] = np.arange(
        4, 4 + len(RESIDUE_CHARACTERS), dtype=np.int64
    )
    table.setflags(write=False)
    return table


ESM1B_TOKENS: np.ndarray = _build_table()


def tokenize(residues: bytes | str) -> np.ndarray:
    """Token ids (int64) of the residues, without BOS/EOS; characters outside the alphabet
    become `<unk>`."""
    if isinstance(residues, str):
        residues = residues.encode("utf-8", "surrogateescape")
    return ESM1B_TOKENS[np.frombuffer(residues, dtype=np.uint8)]


def count_unknown(residues: bytes) -> int:
    """How many residues of (upper-cased) `residues` fall outside the alphabet."""
    return len(residues.translate(None, RESIDUE_CHARACTERS))
