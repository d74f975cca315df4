"""DNA reads the VirNucPro way: overlapping fixed-size chunks, six-frame translation.

Reproduces `split_fasta_chunk`, `translate_dna` and `identify_seq` of VirNucPro's `units.py`
(Li Jing, https://github.com/Li-Jing-1997/VirNucPro), rule for rule:

- Chunks: `n = ceil(L / size)` chunks starting at `k * size`, each moved back by the running
  sum of per-gap overlaps. The total overlap `n * size - L` is spread as `lower = overlap // n`
  and `upper = lower + 1`; VirNucPro gives the first `overlap - lower * (n - 1)` gaps `upper`.
  When that count is at most `n - 1` every chunk is full length and the last one ends at the
  read's end. Otherwise (e.g. 301 bp at size 300 gives chunks of 300 and 151 bp; 1000 bp gives
  300, 300, 300 and 253) the last chunk is shorter: this is what VirNucPro does, and its
  classifier was trained on chunks made so, so it is kept. A read shorter than `size` is one
  chunk. Chunk ids are `{read_id}_chunk_{k}` with `k` from 1.
- Frames: F1-F3 read the chunk from offsets 0, 1, 2; R1-R3 read its reverse complement from
  offsets 0, 1, 2. The standard codon table; a codon with any base other than A, C, G, T gives
  no residue (it is skipped, as VirNucPro's `codon_table.get(codon, '')`).
- A frame is kept when its protein has no stop (`*`) and is not empty (VirNucPro's
  `prediction.py` drops empty proteins); its id is the chunk id suffixed `F1`..`R3`.
"""

import numpy as np

FRAME_LABELS = ("F1", "F2", "F3", "R1", "R2", "R3")

_BASES = b"TCAG"
_AMINO_ACIDS_TCAG = b"FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
"""The standard genetic code, codons ordered TTT, TTC, TTA, TTG, TCT, ... (bases T, C, A, G)."""


def _base_codes() -> tuple[np.ndarray, np.ndarray]:
    forward = np.full(256, 4, dtype=np.uint8)
    complement = np.full(256, 4, dtype=np.uint8)
    for code, base in enumerate(_BASES):
        forward[base] = code
    for base, partner in zip(b"ACGT", b"TGCA", strict=True):
        complement[base] = forward[partner]
    return forward, complement


_FORWARD_CODE, _COMPLEMENT_CODE = _base_codes()
_CODON_TABLE = np.frombuffer(_AMINO_ACIDS_TCAG, dtype=np.uint8)


def chunk_starts(read_length: int, chunk_size: int) -> list[int]:
    """Start of every chunk of a read of `read_length` bases, as VirNucPro's split_fasta_chunk."""
    num_chunks = -(-read_length // chunk_size)
    overlap = num_chunks * chunk_size - read_length
    lower = overlap // num_chunks
    num_upper = overlap - lower * (num_chunks - 1)
    steps = [lower + 1] * num_upper + [lower] * (num_chunks - 1 - num_upper) + [0]
    starts = []
    moved = 0
    # VirNucPro zips lists of unequal length (steps can be longer): strict=False on purpose.
    for start, step in zip(range(0, read_length, chunk_size), steps, strict=False):
        starts.append(start - moved)
        moved += step
    return starts


def _translate_codes(codes: np.ndarray, offset: int) -> bytes:
    num_codons = max(0, (len(codes) - offset) // 3)
    codons = codes[offset : offset + 3 * num_codons].reshape(num_codons, 3)
    complete = (codons < 4).all(axis=1)
    codons = codons[complete].astype(np.intp)
    return _CODON_TABLE[codons[:, 0] * 16 + codons[:, 1] * 4 + codons[:, 2]].tobytes()


def translate_frame(chunk: bytes, frame: int) -> bytes:
    """Protein of one frame (0-2 forward F1-F3, 3-5 reverse complement R1-R3) of an
    upper-case DNA chunk."""
    bases = np.frombuffer(chunk, dtype=np.uint8)
    if frame < 3:
        return _translate_codes(_FORWARD_CODE[bases], frame)
    return _translate_codes(_COMPLEMENT_CODE[bases][::-1], frame - 3)


def kept_frames(chunk: bytes) -> list[tuple[int, bytes]]:
    """(frame, protein) for the frames VirNucPro keeps: no stop codon, not empty."""
    kept = []
    for frame in range(6):
        protein = translate_frame(chunk, frame)
        if protein and b"*" not in protein:
            kept.append((frame, protein))
    return kept
