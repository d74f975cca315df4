"""The rules of `virnucpro.data.reads` for many reads per numpy call.

Translating chunk by chunk and frame by frame costs tens of microseconds per read in numpy
call overhead alone; here every step runs once over a buffer holding many reads' bases:

- `chunk_table`: every chunk of every read (`chunk_starts`, vectorised).
- `codon_index`: for each base position, the number (0-124) of the triple starting there, in
  base-5 digits (A, C, G, T, then 4 for any other byte). One number serves both strands: the
  reverse-complement frames read, at forward position `q`, the reverse complement of the
  triple at `q`, so two 125-entry tables give the forward and the reverse residue.
- `frame_table`: each chunk's six frames' residue and stop counts from per-phase prefix sums
  (a frame's codons are every third position), so the index pass decides which frames
  VirNucPro keeps, and how long each protein is, without building any protein.
- `translate_chunks`: the proteins of chosen (chunk, frame) pairs, one gather for all.
"""

import numpy as np

from virnucpro.data.reads import _AMINO_ACIDS_TCAG, _BASES

_OTHER = 4
_NARROW_BITS, _WIDE_BITS = 10, 21
MAX_CHUNK_SIZE = 3 * ((1 << _WIDE_BITS) - 1)
"""Longest chunk whose per-frame counts fit the packed prefix-sum fields."""

_ACGT = b"ACGT"
_COMPLEMENT = {ord("A"): ord("T"), ord("C"): ord("G"), ord("G"): ord("C"), ord("T"): ord("A")}


def _tables() -> tuple[bytes, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    base_code = np.full(256, _OTHER, dtype=np.uint8)
    base_code[np.frombuffer(_ACGT, dtype=np.uint8)] = np.arange(4, dtype=np.uint8)
    standard = dict(
        zip(
            (bytes((a, b, c)) for a in _BASES for b in _BASES for c in _BASES),
            _AMINO_ACIDS_TCAG,
            strict=True,
        )
    )
    forward = np.zeros(125, dtype=np.uint8)
    reverse = np.zeros(125, dtype=np.uint8)
    counts = {bits: np.zeros(125, dtype=np.int64) for bits in (_NARROW_BITS, _WIDE_BITS)}
    for a, b, c in np.ndindex(4, 4, 4):
        number = a * 25 + b * 5 + c
        triple = bytes((_ACGT[a], _ACGT[b], _ACGT[c]))
        partner = bytes(_COMPLEMENT[base] for base in reversed(triple))
        forward[number] = standard[triple]
        reverse[number] = standard[partner]
        stop_f, stop_r = standard[triple] == ord("*"), standard[partner] == ord("*")
        for bits, table in counts.items():
            table[number] = 1 + (stop_f << bits) + (stop_r << (2 * bits))
    counts[_NARROW_BITS] = counts[_NARROW_BITS].astype(np.int32)
    return base_code.tobytes(), forward, reverse, counts


_BASE_CODE, _FORWARD_RESIDUE, _REVERSE_RESIDUE, _CODON_COUNTS = _tables()
"""Byte -> base code (a bytes.translate table); codon number -> forward / reverse residue (0:
no residue); field width -> packed counts per codon number (1 residue, forward stop << bits,
reverse stop << 2 bits). 10-bit fields (int32, summed modulo 2**32: a range's sum is exact
while each field stays below 1024) serve chunks up to 3069 bases, 21-bit ones (int64) the
rest."""


def chunk_table(
    read_lengths: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(read, chunk number from 1, start in the read, length) of every chunk, in read order,
    by the rule of `virnucpro.data.reads.chunk_starts`."""
    lengths = np.asarray(read_lengths, dtype=np.int64)
    num_chunks = -(-lengths // chunk_size)
    overlap = num_chunks * chunk_size - lengths
    lower = overlap // np.maximum(num_chunks, 1)
    num_upper = overlap - lower * (num_chunks - 1)
    read = np.repeat(np.arange(len(lengths), dtype=np.int64), num_chunks)
    first = np.cumsum(num_chunks) - num_chunks
    k = np.arange(int(num_chunks.sum()), dtype=np.int64) - first[read]
    start = k * (chunk_size - lower[read]) - np.minimum(k, num_upper[read])
    length = np.minimum(chunk_size, lengths[read] - start)
    return read, k + 1, start, length


def codon_index(bases: np.ndarray | bytes) -> np.ndarray:
    """Codon number (0-124, uint8) of the triple starting at every position of `bases`
    (upper-case bytes); the last two positions see padding and give codons with no residue."""
    codes = np.frombuffer(bytes(bases).translate(_BASE_CODE) + b"\xff\xff", dtype=np.uint8)
    number = codes[:-2] * np.uint8(25)
    number += codes[1:-1] * np.uint8(5)
    number += codes[2:]
    number[-2:] = 124
    return number


def _frame_spans(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chunk and frame (C order, F1..R3): first forward codon position and codon count."""
    frame = np.arange(3, dtype=np.int64)
    starts, lengths = starts[:, None], lengths[:, None]
    count = np.maximum((lengths - frame) // 3, 0)
    forward_first = starts + frame
    reverse_first = starts + lengths - frame - 3 * count
    return np.concatenate((forward_first, reverse_first), axis=1), np.concatenate(
        (count, count), axis=1
    )


def _phase_prefix(counts: np.ndarray) -> np.ndarray:
    """`prefix[p + 3]` = sum of `counts[q]` for q <= p, q = p mod 3 (every third position,
    as a frame reads codons); `prefix[0:3]` = 0. Sums wrap in the counts' integer type."""
    rows = -(-len(counts) // 3)
    padded = np.zeros(3 * rows, dtype=counts.dtype)
    padded[: len(counts)] = counts
    prefix = np.zeros((rows + 1, 3), dtype=counts.dtype)
    by_phase = padded.reshape(rows, 3)
    for phase in range(3):
        np.cumsum(by_phase[:, phase], out=prefix[1:, phase])
    return prefix.reshape(-1)


def frame_table(
    bases: np.ndarray | bytes, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(residues, kept) per chunk and frame, shape (chunks, 6), frames F1, F2, F3, R1, R2, R3.

    `starts`/`lengths` locate each chunk in `bases`; `kept` says whether VirNucPro keeps the
    frame (not empty, no stop codon) and `residues` is then the length of its protein.
    """
    lengths = np.asarray(lengths, np.int64)
    bits = (
        _NARROW_BITS if not len(lengths) or lengths.max() < 3 * (1 << _NARROW_BITS) else _WIDE_BITS
    )
    mask = (1 << bits) - 1
    prefix = _phase_prefix(_CODON_COUNTS[bits].take(codon_index(bases)))
    first, count = _frame_spans(np.asarray(starts, np.int64), lengths)
    totals = (prefix[first + 3 * count] - prefix[first]).astype(np.int64)
    residues = totals & mask
    stops = np.empty_like(totals)
    stops[:, :3] = (totals[:, :3] >> bits) & mask
    stops[:, 3:] = (totals[:, 3:] >> (2 * bits)) & mask
    return residues, (residues > 0) & (stops == 0)


def translate_chunks(
    bases: np.ndarray, starts: np.ndarray, lengths: np.ndarray, frames: np.ndarray
) -> tuple[bytes, np.ndarray]:
    """Proteins of chunk `j` (at `starts[j]`, `lengths[j]` bases in `bases`) in frame
    `frames[j]` (0-5): all of them concatenated, and each one's length."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    frames = np.asarray(frames, np.int64)
    number = codon_index(bases)
    residue = np.concatenate((_FORWARD_RESIDUE.take(number), _REVERSE_RESIDUE.take(number)))
    first, count = _frame_spans(starts, lengths)
    rows = np.arange(len(frames))
    first, count = first[rows, frames], count[rows, frames]
    reverse = frames >= 3
    step = np.where(reverse, -3, 3)
    origin = np.where(reverse, first + 3 * (count - 1) + len(number), first)
    offsets = np.cumsum(count) - count
    owner = np.repeat(rows, count)
    position = origin[owner] + step[owner] * (np.arange(int(count.sum())) - offsets[owner])
    gathered = residue[position]
    present = gathered != 0
    protein_lengths = np.bincount(owner[present], minlength=len(frames)).astype(np.int64)
    return gathered[present].tobytes(), protein_lengths
