"""DNA read records of a FASTA segment, parsed by numpy calls over the whole segment.

A read of a few hundred bases leaves no time for per-record Python (a 1M-read sample must be
indexed in seconds), so this gives, for a segment of whole records (`scan_segments`), exactly
what `scan_records` and `normalize_dna` give record by record: each header's first word, each
body's location, its base count and all bodies' normalised bases, concatenated.
"""

from dataclasses import dataclass

import numpy as np

from virnucpro.data.fasta_scan import normalize_dna

_NEWLINE, _HEADER = ord("\n"), ord(">")


@dataclass(frozen=True)
class ReadRecords:
    """The records of one segment, in order."""

    ids: list[bytes]
    """First word of each header (b"" when the header has none)."""
    body_offsets: np.ndarray
    """int64 stream position of each raw body."""
    body_spans: np.ndarray
    """int64 raw body bytes (line breaks included)."""
    base_counts: np.ndarray
    """int64 bases of each body once normalised (0: an empty sequence)."""
    bases: bytes
    """Every body normalised (`normalize_dna`), concatenated in order."""


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions `starts[i] .. starts[i] + lengths[i] - 1` of every span, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(starts)), lengths)
    return starts[owner] + np.arange(int(lengths.sum())) - offsets[owner]


def parse_reads(segment: bytes, position: int) -> ReadRecords:
    """Records of `segment` (starting at a header's `>`, at stream `position`)."""
    data = np.frombuffer(segment, dtype=np.uint8)
    headers = np.flatnonzero(data == _HEADER)
    headers = headers[(headers == 0) | (data[headers - 1] == _NEWLINE)]
    record_ends = np.append(headers[1:] - 1, len(data))
    end = [len(data)]
    whitespace = np.append(np.flatnonzero((data == 32) | ((data >= 9) & (data <= 13))), end)
    newlines = np.append(np.flatnonzero(data == _NEWLINE), end)
    header_ends = np.minimum(newlines[np.searchsorted(newlines, headers)], record_ends)
    body_starts = np.minimum(header_ends + 1, record_ends)
    spans = record_ends - body_starts
    blanks = np.searchsorted(whitespace, record_ends) - np.searchsorted(whitespace, body_starts)

    word_ends = np.minimum(whitespace[np.searchsorted(whitespace, headers + 1)], header_ends)
    word_lengths = word_ends - headers - 1
    joined = np.full(int(word_lengths.sum()) + len(headers), _NEWLINE, dtype=np.uint8)
    slots = np.cumsum(word_lengths + 1) - (word_lengths + 1)
    joined[_spans(slots, word_lengths)] = data[_spans(headers + 1, word_lengths)]
    ids = joined[:-1].tobytes().split(b"\n")
    for i in np.flatnonzero(word_lengths == 0).tolist():
        fields = segment[headers[i] + 1 : header_ends[i]].split(None, 1)
        ids[i] = fields[0] if fields else b""

    bodies = data.copy()
    bodies[_spans(headers, header_ends - headers)] = _NEWLINE
    return ReadRecords(
        ids=ids,
        body_offsets=body_starts + position,
        body_spans=spans,
        base_counts=spans - blanks,
        bases=normalize_dna(bodies.tobytes()),
    )
