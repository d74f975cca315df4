"""DNA input cut into pieces of whole records, parsed and frame-tabled on threads.

The index pass must assemble records, ids and checks in input order, but a piece's
parsing and frame table are numpy calls over a megabyte that release the GIL for most of
their time. So pool threads work a few pieces ahead while the pass takes finished pieces
in order (with the hash on a thread of its own, 1M reads of 300 bp index in 1.35 s
instead of 1.73 s on 2 cores, 10M in 25 s instead of 44 s on an H200 host), and the GPU
waits less for a large sample. Threads, not processes: nothing to import or pickle, no
start-up to pay on a small input, and nothing to go wrong in a caller's script that
lacks a main guard.
"""

import os
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from virnucpro.data.read_records import ReadRecords, parse_reads
from virnucpro.data.six_frames import chunk_table, frame_table

PIECE_BYTES = 1 << 20
"""DNA input is parsed and tabled about this many bytes per numpy call (cache-sized)."""
MAX_THREADS = 4
"""Beyond this the in-order assembly, not the parsing, bounds the pass: 10M reads of 300 bp
indexed in 44.0, 30.0, 25.2, 26.0 and 28.8 s with 1, 2, 4, 8 and 16 threads on a 16-core
H200 host (the GIL grows contended)."""
PIECES_AHEAD_PER_THREAD = 2


@dataclass(frozen=True)
class KeptFrames:
    """The frames VirNucPro keeps of a piece's reads, in read, chunk, frame order."""

    read: np.ndarray
    """int64 read number within the piece."""
    chunk: np.ndarray
    """int64 chunk number within its read, from 1."""
    chunk_start: np.ndarray
    """int64 first base of the chunk within its read."""
    frame: np.ndarray
    """int64 0-5 for F1..R3."""
    residues: np.ndarray
    """int64 length of the frame's protein."""
    chunks: int
    """Chunks of the piece's reads, kept frames or not."""
    chunks_without_protein: int


@dataclass(frozen=True)
class ParsedPiece:
    records: ReadRecords
    frames: KeptFrames


def kept_frame_table(read_lengths: np.ndarray, bases: bytes, chunk_size: int) -> KeptFrames:
    """Every chunk of these reads (their normalised `bases` concatenated) and which of its
    six frames VirNucPro keeps."""
    read, number, start, length = chunk_table(read_lengths, chunk_size)
    read_starts = np.cumsum(read_lengths) - read_lengths
    residues, kept = frame_table(bases, read_starts[read] + start, length)
    rows, frames = np.nonzero(kept)
    return KeptFrames(
        read=read[rows],
        chunk=number[rows],
        chunk_start=start[rows],
        frame=frames,
        residues=residues[kept],
        chunks=len(read),
        chunks_without_protein=int(len(read) - np.count_nonzero(kept.any(axis=1))),
    )


def parse_piece(piece: bytes, position: int, chunk_size: int) -> ParsedPiece:
    records = parse_reads(piece, position)
    return ParsedPiece(records, kept_frame_table(records.base_counts, records.bases, chunk_size))


def pieces_of(segments: Iterable[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
    """(piece, stream position): each segment of whole records cut after about
    `PIECE_BYTES` at a record boundary."""
    for segment, position in segments:
        start = 0
        while start < len(segment):
            cut = segment.find(b"\n>", start + PIECE_BYTES)
            end = len(segment) if cut < 0 else cut
            yield segment[start:end], position + start
            start = end + 1


def index_threads() -> int:
    """Threads for parsing pieces: the cores this process may use, at most `MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def parsed_pieces(
    segments: Iterable[tuple[bytes, int]], chunk_size: int, threads: int | None = None
) -> Generator[ParsedPiece, None, None]:
    """The pieces of `segments`, parsed, in input order, on `threads` pool threads
    (`index_threads()` by default) a bounded number of pieces ahead of the caller."""
    threads = threads or index_threads()
    ahead = threads * PIECES_AHEAD_PER_THREAD
    pool = ThreadPoolExecutor(threads, thread_name_prefix="virnucpro-index")
    pending: deque[Future[ParsedPiece]] = deque()
    failure: Exception | None = None
    try:
        try:
            for piece, position in pieces_of(segments):
                pending.append(pool.submit(parse_piece, piece, position, chunk_size))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
        except Exception as error:
            # Reading further failed (a damaged gzip): the pieces read before it come
            # first, so a bad record in them is still the error reported, as in order.
            failure = error
        while pending:
            yield pending.popleft().result()
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
