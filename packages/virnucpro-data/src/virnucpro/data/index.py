"""The index pass: every record's input position, id, length and location, in one pass.

`build_index` reads every input once, finds bad input before any GPU work (`InputError`, one
line naming file and record) and hashes the content for the run's fingerprint. Workers then
fetch residues by input index with `SequenceIndex.read` / `read_many`, which reopen files by
path in each process, so the index pickles cheaply into spawned DataLoader workers.

Gzip cannot be read at an offset, so during the index pass the normalised residues of a gzip
input (the DNA bases, for reads) are written uncompressed to a spool file and read from there:
random access for every worker at the cost of disk the size of the residues. The spool lives
in `spool_dir` (kept, owned by the caller, e.g. a run directory) or, by default, a temporary
directory removed when the index that built it is garbage collected.

DNA reads (`input_type="dna"`) become the VirNucPro proteins of `virnucpro.data.reads`; entry
`i` is then one kept frame of one chunk, in the order read, chunk, frame. The index pass
has no per-read Python and translates nothing: `read_records.parse_reads` parses a piece of
records per numpy call, `six_frames.frame_table` decides which frames are kept and how long
their proteins are, and ids are made on demand from the read ids, so the pass costs a few
microseconds of one core per read (not the ~200 the per-chunk, per-frame way took). A loader
translates just the
frames of its batch (`read_many`, one gather for the batch), in its own process. Storing the
proteins instead would cost a spool write of every protein in the serial pass before any GPU
work, and a spool for plain files that need none today.
"""

import hashlib
import os
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path
from shutil import rmtree

import numpy as np

from virnucpro.data.background_hash import BackgroundHash
from virnucpro.data.errors import InputError
from virnucpro.data.fasta_scan import (
    is_gzip,
    normalize_dna,
    normalize_protein,
    scan_records,
    scan_segments,
)
from virnucpro.data.nonstandard import (
    NonstandardSummary,
    nonstandard_bytes,
    strict_message,
    summarize,
)
from virnucpro.data.read_pieces import KeptFrames, parsed_pieces
from virnucpro.data.read_records import ReadRecords
from virnucpro.data.reads import FRAME_LABELS
from virnucpro.data.six_frames import MAX_CHUNK_SIZE, translate_chunks
from virnucpro.data.tokenizer import count_unknown

INPUT_TYPES = ("protein", "dna")
FINGERPRINT_VERSION = b"virnucpro-index-2"
"""2: digits in protein records are dropped (they were `<unk>` in 1); SHA-256 (first 128 bits),
hardware-accelerated where blake2b was not."""
MAX_LISTED_DUPLICATES = 5


class SequenceIndex:
    """Where every input sequence is; `len(index)` sequences keyed by input index 0..N-1.

    Per sequence: `ids`, `lengths` (int64 residues, before truncation), `unknown_residues`
    (int64: residues that are `<unk>` tokens), `nonstandard` (int64: characters that are not
    standard amino-acid letters, see `virnucpro.data.nonstandard`), `file_of` (int32 input
    file), and its provenance: `read_index` (int64 into `read_ids`, the input records),
    `chunk` (int32, from 1; 0 for protein input) and `frame` (int8, 0-5 for F1..R3 as in
    `FRAME_LABELS`; -1 for protein input). Per run: `files`, `fingerprint` (hex),
    `input_type`, `chunk_size`, `chunks` and `chunks_without_protein` (DNA chunks in all, and
    those no frame of which VirNucPro keeps).
    """

    def __init__(
        self,
        *,
        files: list[Path],
        sources: list[Path],
        read_id_blob: bytes,
        read_id_offsets: np.ndarray,
        lengths: np.ndarray,
        unknown_residues: np.ndarray,
        nonstandard: np.ndarray,
        nonstandard_counts: Counter[int],
        fingerprint: str,
        input_type: str,
        chunk_size: int,
        record_source: np.ndarray,
        record_offset: np.ndarray,
        record_span: np.ndarray,
        read_index: np.ndarray,
        chunk: np.ndarray,
        chunk_start: np.ndarray,
        frame: np.ndarray,
        chunks: int,
        chunks_without_protein: int,
    ) -> None:
        self.files = files
        self.lengths = lengths
        self.unknown_residues = unknown_residues
        self.nonstandard = nonstandard
        self.fingerprint = fingerprint
        self.input_type = input_type
        self.chunk_size = chunk_size
        self.read_index = read_index
        self.chunk = chunk
        self.frame = frame
        self.chunks = chunks
        self.chunks_without_protein = chunks_without_protein
        self._nonstandard_counts = nonstandard_counts
        self._sources = sources
        self._read_id_blob = read_id_blob
        self._read_id_offsets = read_id_offsets
        self._record_source = record_source
        self._record_offset = record_offset
        self._record_span = record_span
        self._chunk_start = chunk_start
        self._fds: dict[int, int] = {}
        self._read_ids: list[str] | None = None
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}
        state["_read_ids"] = None
        state["_ids"] = None
        return state

    @property
    def spooled(self) -> bool:
        """Whether some input is gzip, read through a spool of its residues."""
        return self._sources != self.files

    @property
    def file_of(self) -> np.ndarray:
        return self._record_source[self.read_index]

    @property
    def read_ids(self) -> list[str]:
        """Ids of the input records (the reads, for DNA input), as `read_index` counts them."""
        if self._read_ids is None:
            self._read_ids = self._read_id_blob.decode("utf-8", "replace").split("\n")
        return self._read_ids

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            if self.input_type == "protein":
                self._ids = self.read_ids
            else:
                self._ids = self.ids_of(range(len(self)))
        return self._ids

    def _read_ids_of(self, records: np.ndarray) -> list[str]:
        """Ids of these input records, sliced from the blob (no need to decode all of it)."""
        blob = self._read_id_blob
        starts = self._read_id_offsets[records].tolist()
        ends = (self._read_id_offsets[records + 1] - 1).tolist()
        return [
            blob[start:end].decode("utf-8", "replace")
            for start, end in zip(starts, ends, strict=True)
        ]

    def id(self, i: int) -> str:
        """Id of sequence `i`; for DNA `{read}_chunk_{k}{F1..R3}` as VirNucPro names it."""
        return self.ids_of([i])[0]

    def ids_of(self, indices: Iterable[int]) -> list[str]:
        """Ids of the sequences at `indices`, in that order."""
        indices = np.fromiter(indices, np.int64) if not isinstance(indices, np.ndarray) else indices
        if self.input_type == "protein":
            return self._read_ids_of(indices)
        return [
            f"{read}_chunk_{chunk}{FRAME_LABELS[frame]}"
            for read, chunk, frame in zip(
                self._read_ids_of(self.read_index[indices]),
                self.chunk[indices].tolist(),
                self.frame[indices].tolist(),
                strict=True,
            )
        ]

    def nonstandard_summary(self, limit: int = 5) -> NonstandardSummary:
        """Sequences holding non-standard characters: how many, the first `limit` ids, and
        each character's count and fate."""
        holding = np.flatnonzero(self.nonstandard)
        return summarize(self._nonstandard_counts, len(holding), self.ids_of(holding[:limit]))

    def _fd(self, source: int) -> int:
        fd = self._fds.get(source)
        if fd is None:
            fd = self._fds[source] = os.open(self._sources[source], os.O_RDONLY)
        return fd

    def _raw_many(self, records: np.ndarray) -> list[bytes]:
        """Raw bodies (spooled residues for gzip inputs) of these records, in order."""
        where = zip(
            self._record_source[records].tolist(),
            self._record_span[records].tolist(),
            self._record_offset[records].tolist(),
            strict=True,
        )
        return [os.pread(self._fd(source), span, offset) for source, span, offset in where]

    def read(self, i: int) -> bytes:
        """Residues of sequence `i`: upper-cased, `*` stripped; for DNA the translated frame."""
        return self.read_many([i])[0]

    def read_many(self, indices: Iterable[int]) -> list[bytes]:
        """Residues of the sequences at `indices`, in that order; DNA frames are translated
        together, one numpy gather for all."""
        indices = np.fromiter(indices, np.int64) if not isinstance(indices, np.ndarray) else indices
        if self.input_type == "protein":
            return [normalize_protein(body) for body in self._raw_many(indices)]
        records, where = np.unique(self.read_index[indices], return_inverse=True)
        reads = [normalize_dna(body) for body in self._raw_many(records)]
        read_lengths = np.fromiter(map(len, reads), np.int64, len(reads))
        read_starts = np.cumsum(read_lengths) - read_lengths
        within = self._chunk_start[indices]
        blob, lengths = translate_chunks(
            np.frombuffer(b"".join(reads), dtype=np.uint8),
            read_starts[where] + within,
            np.minimum(self.chunk_size, read_lengths[where] - within),
            self.frame[indices],
        )
        ends = np.cumsum(lengths).tolist()
        return [blob[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]

    def close(self) -> None:
        """Close this process's file handles (they reopen on the next read)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Builder:
    """Accumulates the index in one pass over the inputs."""

    def __init__(
        self,
        input_type: str,
        chunk_size: int,
        spool_dir: Path | None,
        strict: bool,
        threads: int | None,
    ) -> None:
        self.input_type = input_type
        self.threads = threads
        self.chunk_size = chunk_size
        self.spool_dir = spool_dir
        self.strict = strict
        self.hasher = BackgroundHash(hashlib.sha256())
        self.hasher.update(FINGERPRINT_VERSION + f"|{input_type}|{chunk_size}|".encode())
        self.sources: list[Path] = []
        self.record_ids: list[bytes] = []
        self.record_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        """Per file or piece: record source file, number in its file, offset and span."""
        self.record_columns: tuple[np.ndarray, ...] = ()
        self.lengths: list[int] = []
        self.unknown: list[int] = []
        self.nonstandard: list[int] = []
        self.nonstandard_counts: Counter[int] = Counter()
        self.reads_seen = 0
        self.frames: list[tuple[np.ndarray, ...]] = []
        self.chunks = 0
        self.chunks_without_protein = 0
        self.owned_spool: Path | None = None

    def _spool_path(self, file_number: int, path: Path) -> Path:
        if self.spool_dir is None:
            self.owned_spool = self.owned_spool or Path(tempfile.mkdtemp(prefix="virnucpro-"))
            directory = self.owned_spool
        else:
            directory = self.spool_dir
            directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{file_number:04d}_{path.name}.residues"

    def add_file(self, file_number: int, path: Path) -> None:
        spool = None
        if is_gzip(path):
            spool_path = self._spool_path(file_number, path)
            spool = open(spool_path, "wb")  # noqa: SIM115
            self.sources.append(spool_path)
        else:
            self.sources.append(path)
        try:
            self._scan(file_number, path, spool)
        finally:
            if spool is not None:
                spool.close()
        self.hasher.update(f"|end of file {file_number}|".encode())

    def _scan(self, file_number: int, path: Path, spool) -> None:
        if self.input_type == "dna":
            self._scan_reads(file_number, path, spool)
            return
        spool_position = 0
        offsets: list[int] = []
        spans: list[int] = []
        for number, (header, body, offset) in enumerate(scan_records(path, self.hasher), 1):
            fields = header.split(None, 1)
            if not fields:
                raise InputError(f"{path}: record #{number} has no id after '>'; give it one")
            residues = normalize_protein(body)
            if not residues:
                _empty_sequence(path, number, fields[0])
            self.record_ids.append(fields[0])
            if spool is None:
                offsets.append(offset)
                spans.append(len(body))
            else:
                spool.write(residues)
                offsets.append(spool_position)
                spans.append(len(residues))
                spool_position += len(residues)
            self._add_protein(path, number, fields[0], body, residues)
        self._add_records(file_number, 0, np.array(offsets), np.array(spans))

    def _add_records(
        self, file_number: int, numbered: int, offsets: np.ndarray, spans: np.ndarray
    ) -> None:
        count = len(offsets)
        self.record_parts.append(
            (
                np.full(count, file_number, dtype=np.int32),
                np.arange(numbered + 1, numbered + count + 1, dtype=np.int64),
                offsets.astype(np.int64),
                spans.astype(np.int64),
            )
        )

    def _scan_reads(self, file_number: int, path: Path, spool) -> None:
        """DNA records a piece of whole records at a time, with no per-record Python; the
        pieces are parsed on threads, and taken here in input order."""
        numbered = 0
        spool_position = 0
        segments = scan_segments(path, self.hasher)
        with closing(parsed_pieces(segments, self.chunk_size, self.threads)) as pieces:
            for piece in pieces:
                records = piece.records
                self._check_reads(path, numbered, records)
                self.record_ids.extend(records.ids)
                if spool is None:
                    self._add_records(
                        file_number, numbered, records.body_offsets, records.body_spans
                    )
                else:
                    spool.write(records.bases)
                    starts = np.cumsum(records.base_counts) - records.base_counts
                    self._add_records(
                        file_number, numbered, starts + spool_position, records.base_counts
                    )
                    spool_position += len(records.bases)
                self._add_reads(len(records.ids), piece.frames)
                numbered += len(records.ids)

    @staticmethod
    def _check_reads(path: Path, numbered: int, records: ReadRecords) -> None:
        """The first record without an id or bases, as the record-by-record scan finds it."""
        no_id = [records.ids.index(b"")] if b"" in records.ids else []
        empty = np.flatnonzero(records.base_counts == 0)[:1].tolist()
        if not no_id and not empty:
            return
        first = min(no_id + empty)
        if no_id and no_id[0] == first:
            raise InputError(
                f"{path}: record #{numbered + first + 1} has no id after '>'; give it one"
            )
        _empty_sequence(path, numbered + first + 1, records.ids[first])

    def _add_protein(
        self, path: Path, number: int, name: bytes, body: bytes, residues: bytes
    ) -> None:
        self.lengths.append(len(residues))
        self.unknown.append(count_unknown(residues))
        odd = nonstandard_bytes(body)
        self.nonstandard.append(len(odd))
        if odd:
            if self.strict:
                raise InputError(strict_message(path, number, name.decode("utf-8", "replace"), odd))
            self.nonstandard_counts.update(odd)

    def _add_reads(self, reads: int, kept: KeptFrames) -> None:
        """The kept frames of the next `reads` reads: (read, chunk number, chunk start,
        frame, length)."""
        self.frames.append(
            (kept.read + self.reads_seen, kept.chunk, kept.chunk_start, kept.frame, kept.residues)
        )
        self.chunks += kept.chunks
        self.chunks_without_protein += kept.chunks_without_protein
        self.reads_seen += reads

    def check_unique_ids(self, files: Sequence[Path]) -> None:
        if len(set(self.record_ids)) == len(self.record_ids):
            return
        first_seen: dict[bytes, int] = {}
        listed: list[str] = []
        count = 0
        for record, name in enumerate(self.record_ids):
            if name not in first_seen:
                first_seen[name] = record
                continue
            count += 1
            if len(listed) < MAX_LISTED_DUPLICATES:
                listed.append(
                    f"'{name.decode('utf-8', 'replace')}' "
                    f"({self._where(first_seen[name], files)} and {self._where(record, files)})"
                )
        raise InputError(
            f"duplicate ids ({count} in all): {', '.join(listed)}; ids must be unique, rename them"
        )

    def _where(self, record: int, files: Sequence[Path]) -> str:
        source, number = self.record_columns[0][record], self.record_columns[1][record]
        return f"{files[source]} record #{number}"

    def _entries(self) -> dict[str, np.ndarray]:
        if self.input_type == "protein":
            count = len(self.lengths)
            return {
                "lengths": np.array(self.lengths, dtype=np.int64),
                "unknown_residues": np.array(self.unknown, dtype=np.int64),
                "nonstandard": np.array(self.nonstandard, dtype=np.int64),
                "read_index": np.arange(count, dtype=np.int64),
                "chunk": np.zeros(count, dtype=np.int32),
                "chunk_start": np.zeros(count, dtype=np.int64),
                "frame": np.full(count, -1, dtype=np.int8),
            }
        read, number, start, frame, lengths = (
            np.concatenate(parts) for parts in zip(*self.frames, strict=True)
        )
        return {
            "lengths": lengths.astype(np.int64),
            "unknown_residues": np.zeros(len(read), dtype=np.int64),
            "nonstandard": np.zeros(len(read), dtype=np.int64),
            "read_index": read.astype(np.int64),
            "chunk": number.astype(np.int32),
            "chunk_start": start.astype(np.int64),
            "frame": frame.astype(np.int8),
        }

    def finish(self, files: list[Path]) -> SequenceIndex:
        self.record_columns = tuple(
            np.concatenate(column) for column in zip(*self.record_parts, strict=True)
        )
        self.check_unique_ids(files)
        entries = self._entries()
        if self.input_type == "dna" and not len(entries["lengths"]):
            raise InputError(
                f"{', '.join(map(str, files))}: no read gives a protein without a stop codon "
                "in any frame; check that these are DNA reads"
            )
        id_blob = b"\n".join(self.record_ids)
        separators = np.flatnonzero(np.frombuffer(id_blob, dtype=np.uint8) == ord("\n"))
        id_offsets = np.concatenate(([0], separators + 1, [len(id_blob) + 1])).astype(np.int64)
        source, _, offset, span = self.record_columns
        index = SequenceIndex(
            files=files,
            sources=self.sources,
            read_id_blob=id_blob,
            read_id_offsets=id_offsets,
            nonstandard_counts=self.nonstandard_counts,
            fingerprint=self.hasher.hexdigest()[:32],
            input_type=self.input_type,
            chunk_size=self.chunk_size,
            record_source=source,
            record_offset=offset,
            record_span=span,
            chunks=self.chunks,
            chunks_without_protein=self.chunks_without_protein,
            **entries,
        )
        if self.owned_spool is not None:
            weakref.finalize(index, rmtree, self.owned_spool, ignore_errors=True)
        return index


def _empty_sequence(path: Path, number: int, name: bytes) -> None:
    raise InputError(
        f"{path}: record #{number} '{name.decode('utf-8', 'replace')}' has an empty sequence; "
        "remove it or give it residues"
    )


def build_index(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    input_type: str = "protein",
    chunk_size: int = 300,
    spool_dir: str | os.PathLike | None = None,
    strict: bool = False,
    threads: int | None = None,
) -> SequenceIndex:
    """Index FASTA inputs (plain or gzip, in the order given) in one pass.

    DNA reads are parsed on `threads` threads (default: the cores, at most 4); the index
    is the same whatever their number.

    Raises InputError for a missing or unreadable file, not FASTA, a file with no records, an
    empty sequence or id, and duplicate ids (the first few listed with file and record). With
    `strict`, also for the first protein record holding non-standard characters (DNA reads
    translate to standard letters only).
    """
    if input_type not in INPUT_TYPES:
        raise InputError(f"input_type must be 'protein' or 'dna', got {input_type!r}")
    if input_type == "dna" and chunk_size < 3:
        raise InputError(f"chunk_size must be at least 3 bases, got {chunk_size}")
    if input_type == "dna" and chunk_size > MAX_CHUNK_SIZE:
        raise InputError(f"chunk_size must be at most {MAX_CHUNK_SIZE} bases, got {chunk_size}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [Path(p) for p in paths]
    if not files:
        raise InputError("no input files given; give at least one FASTA file")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    spool = Path(spool_dir) if spool_dir else None
    builder = _Builder(input_type, chunk_size, spool, strict, threads)
    try:
        for file_number, path in enumerate(files):
            builder.add_file(file_number, path)
        return builder.finish(files)
    except BaseException:
        if builder.owned_spool is not None:
            rmtree(builder.owned_spool, ignore_errors=True)
        raise
    finally:
        builder.hasher.close()
