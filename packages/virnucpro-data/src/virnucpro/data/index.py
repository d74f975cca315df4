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
translates nothing: `six_frames.frame_table` decides, over a buffer of reads per numpy call,
which frames are kept and how long their proteins are, and the ids are made on demand from
the read ids, so the pass costs a few microseconds per read. A loader translates just the
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
from pathlib import Path
from shutil import rmtree

import numpy as np

from virnucpro.data.errors import InputError
from virnucpro.data.fasta_scan import is_gzip, normalize_dna, normalize_protein, scan_records
from virnucpro.data.nonstandard import (
    NonstandardSummary,
    nonstandard_bytes,
    strict_message,
    summarize,
)
from virnucpro.data.reads import FRAME_LABELS
from virnucpro.data.six_frames import MAX_CHUNK_SIZE, chunk_table, frame_table, translate_chunks
from virnucpro.data.tokenizer import count_unknown

INPUT_TYPES = ("protein", "dna")
FINGERPRINT_VERSION = b"virnucpro-index-2"
"""2: digits in protein records are dropped (they were `<unk>` in 1)."""
MAX_LISTED_DUPLICATES = 5
FLUSH_BASES = 1 << 20
"""Bases of pending reads translated per numpy call in the index pass."""


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

    def _read_id(self, record: int) -> str:
        start, end = self._read_id_offsets[record], self._read_id_offsets[record + 1] - 1
        return self._read_id_blob[start:end].decode("utf-8", "replace")

    def id(self, i: int) -> str:
        """Id of sequence `i`; for DNA `{read}_chunk_{k}{F1..R3}` as VirNucPro names it."""
        if self.input_type == "protein":
            return self._read_id(i)
        label = FRAME_LABELS[self.frame[i]]
        return f"{self._read_id(self.read_index[i])}_chunk_{self.chunk[i]}{label}"

    def ids_of(self, indices: Iterable[int]) -> list[str]:
        """Ids of the sequences at `indices`, in that order."""
        indices = np.fromiter(indices, np.int64) if not isinstance(indices, np.ndarray) else indices
        if self.input_type == "protein":
            return [self._read_id(i) for i in indices.tolist()]
        read_ids = self.read_ids
        return [
            f"{read_ids[r]}_chunk_{c}{FRAME_LABELS[f]}"
            for r, c, f in zip(
                self.read_index[indices].tolist(),
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

    def _raw(self, record: int) -> bytes:
        source = int(self._record_source[record])
        fd = self._fds.get(source)
        if fd is None:
            fd = self._fds[source] = os.open(self._sources[source], os.O_RDONLY)
        return os.pread(fd, int(self._record_span[record]), int(self._record_offset[record]))

    def read(self, i: int) -> bytes:
        """Residues of sequence `i`: upper-cased, `*` stripped; for DNA the translated frame."""
        return self.read_many([i])[0]

    def read_many(self, indices: Iterable[int]) -> list[bytes]:
        """Residues of the sequences at `indices`, in that order; DNA frames are translated
        together, one numpy gather for all."""
        indices = np.fromiter(indices, np.int64) if not isinstance(indices, np.ndarray) else indices
        if self.input_type == "protein":
            return [normalize_protein(self._raw(i)) for i in indices.tolist()]
        records, where = np.unique(self.read_index[indices], return_inverse=True)
        reads = [normalize_dna(self._raw(r)) for r in records.tolist()]
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
        self, input_type: str, chunk_size: int, spool_dir: Path | None, strict: bool
    ) -> None:
        self.input_type = input_type
        self.chunk_size = chunk_size
        self.spool_dir = spool_dir
        self.strict = strict
        self.hasher = hashlib.blake2b(digest_size=16)
        self.hasher.update(FINGERPRINT_VERSION + f"|{input_type}|{chunk_size}|".encode())
        self.sources: list[Path] = []
        self.record_ids: list[bytes] = []
        self.record_number: list[int] = []
        self.record_source: list[int] = []
        self.record_offset: list[int] = []
        self.record_span: list[int] = []
        self.lengths: list[int] = []
        self.unknown: list[int] = []
        self.nonstandard: list[int] = []
        self.nonstandard_counts: Counter[int] = Counter()
        self.pending: list[bytes] = []
        self.pending_bases = 0
        self.pending_first = 0
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
        protein = self.input_type == "protein"
        normalize = normalize_protein if protein else normalize_dna
        spool_position = 0
        for number, (header, body, offset) in enumerate(scan_records(path, self.hasher), 1):
            fields = header.split(None, 1)
            if not fields:
                raise InputError(f"{path}: record #{number} has no id after '>'; give it one")
            residues = normalize(body)
            if not residues:
                name = fields[0].decode("utf-8", "replace")
                raise InputError(
                    f"{path}: record #{number} '{name}' has an empty sequence; "
                    "remove it or give it residues"
                )
            self.record_ids.append(fields[0])
            self.record_number.append(number)
            self.record_source.append(file_number)
            if spool is None:
                self.record_offset.append(offset)
                self.record_span.append(len(body))
            else:
                spool.write(residues)
                self.record_offset.append(spool_position)
                self.record_span.append(len(residues))
                spool_position += len(residues)
            if protein:
                self._add_protein(path, number, fields[0], body, residues)
            else:
                self.pending.append(residues)
                self.pending_bases += len(residues)
                if self.pending_bases >= FLUSH_BASES:
                    self._translate_pending()
        if not protein:
            self._translate_pending()

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

    def _translate_pending(self) -> None:
        """Kept frames of the pending reads: (read, chunk number, chunk start, frame, length)."""
        if not self.pending:
            return
        read_lengths = np.fromiter(map(len, self.pending), np.int64, len(self.pending))
        read, number, start, length = chunk_table(read_lengths, self.chunk_size)
        read_starts = np.cumsum(read_lengths) - read_lengths
        bases = np.frombuffer(b"".join(self.pending), dtype=np.uint8)
        residues, kept = frame_table(bases, read_starts[read] + start, length)
        rows, frames = np.nonzero(kept)
        self.frames.append(
            (read[rows] + self.pending_first, number[rows], start[rows], frames, residues[kept])
        )
        self.chunks += len(read)
        self.chunks_without_protein += int(len(read) - np.count_nonzero(kept.any(axis=1)))
        self.pending_first += len(self.pending)
        self.pending = []
        self.pending_bases = 0

    def check_unique_ids(self, files: Sequence[Path]) -> None:
        if len(set(self.record_ids)) == len(self.record_ids):
            return
        first_seen: dict[bytes, int] = {}
        listed = []
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
        return f"{files[self.record_source[record]]} record #{self.record_number[record]}"

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
        self.check_unique_ids(files)
        entries = self._entries()
        if self.input_type == "dna" and not len(entries["lengths"]):
            raise InputError(
                f"{', '.join(map(str, files))}: no read gives a protein without a stop codon "
                "in any frame; check that these are DNA reads"
            )
        id_lengths = np.fromiter(
            (len(n) + 1 for n in self.record_ids), np.int64, len(self.record_ids)
        )
        id_offsets = np.zeros(len(self.record_ids) + 1, dtype=np.int64)
        np.cumsum(id_lengths, out=id_offsets[1:])
        index = SequenceIndex(
            files=files,
            sources=self.sources,
            read_id_blob=b"\n".join(self.record_ids),
            read_id_offsets=id_offsets,
            nonstandard_counts=self.nonstandard_counts,
            fingerprint=self.hasher.hexdigest(),
            input_type=self.input_type,
            chunk_size=self.chunk_size,
            record_source=np.array(self.record_source, dtype=np.int32),
            record_offset=np.array(self.record_offset, dtype=np.int64),
            record_span=np.array(self.record_span, dtype=np.int64),
            chunks=self.chunks,
            chunks_without_protein=self.chunks_without_protein,
            **entries,
        )
        if self.owned_spool is not None:
            weakref.finalize(index, rmtree, self.owned_spool, ignore_errors=True)
        return index


def build_index(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    input_type: str = "protein",
    chunk_size: int = 300,
    spool_dir: str | os.PathLike | None = None,
    strict: bool = False,
) -> SequenceIndex:
    """Index FASTA inputs (plain or gzip, in the order given) in one pass.

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
    builder = _Builder(input_type, chunk_size, Path(spool_dir) if spool_dir else None, strict)
    try:
        for file_number, path in enumerate(files):
            builder.add_file(file_number, path)
        return builder.finish(files)
    except BaseException:
        if builder.owned_spool is not None:
            rmtree(builder.owned_spool, ignore_errors=True)
        raise
