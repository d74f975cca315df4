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
`i` is then one kept frame of one chunk, in the order read, chunk, frame.
"""

import hashlib
import os
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from shutil import rmtree

import numpy as np

from virnucpro.data.errors import InputError
from virnucpro.data.fasta_scan import is_gzip, normalize_dna, normalize_protein, scan_records
from virnucpro.data.reads import FRAME_LABELS, chunk_starts, kept_frames, translate_frame
from virnucpro.data.tokenizer import count_unknown

INPUT_TYPES = ("protein", "dna")
FINGERPRINT_VERSION = b"virnucpro-index-1"
MAX_LISTED_DUPLICATES = 5


class SequenceIndex:
    """Where every input sequence is; `len(index)` sequences keyed by input index 0..N-1.

    Attributes: `files` (input paths, in order), `ids`, `lengths` (int64 residues, before
    truncation), `unknown_residues` (int64 per sequence: residues outside the ESM alphabet),
    `fingerprint` (hex), `input_type`, `chunk_size`, `file_of` (int32 input-file number per
    sequence).
    """

    def __init__(
        self,
        *,
        files: list[Path],
        sources: list[Path],
        id_blob: bytes,
        id_offsets: np.ndarray,
        lengths: np.ndarray,
        unknown_residues: np.ndarray,
        fingerprint: str,
        input_type: str,
        chunk_size: int,
        record_source: np.ndarray,
        record_offset: np.ndarray,
        record_span: np.ndarray,
        entry_record: np.ndarray,
        entry_chunk_start: np.ndarray,
        entry_frame: np.ndarray,
    ) -> None:
        self.files = files
        self.lengths = lengths
        self.unknown_residues = unknown_residues
        self.fingerprint = fingerprint
        self.input_type = input_type
        self.chunk_size = chunk_size
        self._sources = sources
        self._id_blob = id_blob
        self._id_offsets = id_offsets
        self._record_source = record_source
        self._record_offset = record_offset
        self._record_span = record_span
        self._entry_record = entry_record
        self._entry_chunk_start = entry_chunk_start
        self._entry_frame = entry_frame
        self._fds: dict[int, int] = {}
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}
        state["_ids"] = None
        return state

    @property
    def file_of(self) -> np.ndarray:
        return self._record_source[self._entry_record]

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self._id_blob.decode("utf-8", "replace").split("\n")
        return self._ids

    def id(self, i: int) -> str:
        start, end = self._id_offsets[i], self._id_offsets[i + 1] - 1
        return self._id_blob[start:end].decode("utf-8", "replace")

    def _raw(self, record: int) -> bytes:
        source = int(self._record_source[record])
        fd = self._fds.get(source)
        if fd is None:
            fd = self._fds[source] = os.open(self._sources[source], os.O_RDONLY)
        return os.pread(fd, int(self._record_span[record]), int(self._record_offset[record]))

    def read(self, i: int) -> bytes:
        """Residues of sequence `i`: upper-cased, `*` stripped; for DNA the translated frame."""
        record = int(self._entry_record[i])
        if self.input_type == "protein":
            return normalize_protein(self._raw(record))
        start = int(self._entry_chunk_start[i])
        chunk = normalize_dna(self._raw(record))[start : start + self.chunk_size]
        return translate_frame(chunk, int(self._entry_frame[i]))

    def read_many(self, indices: Iterable[int]) -> list[bytes]:
        return [self.read(int(i)) for i in indices]

    def close(self) -> None:
        """Close this process's file handles (they reopen on the next read)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Builder:
    """Accumulates the index in one pass over the inputs."""

    def __init__(self, input_type: str, chunk_size: int, spool_dir: Path | None) -> None:
        self.input_type = input_type
        self.chunk_size = chunk_size
        self.spool_dir = spool_dir
        self.hasher = hashlib.blake2b(digest_size=16)
        self.hasher.update(FINGERPRINT_VERSION + f"|{input_type}|{chunk_size}|".encode())
        self.sources: list[Path] = []
        self.record_ids: list[bytes] = []
        self.record_where: list[tuple[int, int]] = []
        self.record_source: list[int] = []
        self.record_offset: list[int] = []
        self.record_span: list[int] = []
        self.entry_ids: list[bytes] = []
        self.lengths: list[int] = []
        self.unknown: list[int] = []
        self.entry_record: list[int] = []
        self.entry_chunk_start: list[int] = []
        self.entry_frame: list[int] = []
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
        normalize = normalize_protein if self.input_type == "protein" else normalize_dna
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
            record = len(self.record_ids)
            self.record_ids.append(fields[0])
            self.record_where.append((file_number, number))
            self.record_source.append(file_number)
            if spool is None:
                self.record_offset.append(offset)
                self.record_span.append(len(body))
            else:
                spool.write(residues)
                self.record_offset.append(spool_position)
                self.record_span.append(len(residues))
                spool_position += len(residues)
            if self.input_type == "protein":
                self._add_protein(record, fields[0], residues)
            else:
                self._add_read(record, fields[0], residues)

    def _add_protein(self, record: int, name: bytes, residues: bytes) -> None:
        self.entry_ids.append(name)
        self.lengths.append(len(residues))
        self.unknown.append(count_unknown(residues))
        self.entry_record.append(record)

    def _add_read(self, record: int, name: bytes, bases: bytes) -> None:
        for number, start in enumerate(chunk_starts(len(bases), self.chunk_size), 1):
            chunk = bases[start : start + self.chunk_size]
            for frame, protein in kept_frames(chunk):
                self.entry_ids.append(
                    b"%s_chunk_%d%s" % (name, number, FRAME_LABELS[frame].encode())
                )
                self.lengths.append(len(protein))
                self.unknown.append(0)
                self.entry_record.append(record)
                self.entry_chunk_start.append(start)
                self.entry_frame.append(frame)

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
        file_number, number = self.record_where[record]
        return f"{files[file_number]} record #{number}"

    def finish(self, files: list[Path]) -> SequenceIndex:
        self.check_unique_ids(files)
        if self.input_type == "dna" and not self.entry_ids:
            raise InputError(
                f"{', '.join(map(str, files))}: no read gives a protein without a stop codon "
                "in any frame; check that these are DNA reads"
            )
        id_lengths = np.fromiter(
            (len(n) + 1 for n in self.entry_ids), np.int64, len(self.entry_ids)
        )
        id_offsets = np.zeros(len(self.entry_ids) + 1, dtype=np.int64)
        np.cumsum(id_lengths, out=id_offsets[1:])
        index = SequenceIndex(
            files=files,
            sources=self.sources,
            id_blob=b"\n".join(self.entry_ids),
            id_offsets=id_offsets,
            lengths=np.array(self.lengths, dtype=np.int64),
            unknown_residues=np.array(self.unknown, dtype=np.int64),
            fingerprint=self.hasher.hexdigest(),
            input_type=self.input_type,
            chunk_size=self.chunk_size,
            record_source=np.array(self.record_source, dtype=np.int32),
            record_offset=np.array(self.record_offset, dtype=np.int64),
            record_span=np.array(self.record_span, dtype=np.int64),
            entry_record=np.array(self.entry_record, dtype=np.int64),
            entry_chunk_start=np.array(self.entry_chunk_start, dtype=np.int64),
            entry_frame=np.array(self.entry_frame, dtype=np.int8),
        )
        if self.owned_spool is not None:
            weakref.finalize(index, rmtree, self.owned_spool, ignore_errors=True)
        return index


def build_index(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    input_type: str = "protein",
    chunk_size: int = 300,
    spool_dir: str | os.PathLike | None = None,
) -> SequenceIndex:
    """Index FASTA inputs (plain or gzip, in the order given) in one pass.

    Raises InputError for a missing or unreadable file, not FASTA, a file with no records, an
    empty sequence or id, and duplicate ids (the first few listed with file and record).
    """
    if input_type not in INPUT_TYPES:
        raise InputError(f"input_type must be 'protein' or 'dna', got {input_type!r}")
    if input_type == "dna" and chunk_size < 3:
        raise InputError(f"chunk_size must be at least 3 bases, got {chunk_size}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [Path(p) for p in paths]
    if not files:
        raise InputError("no input files given; give at least one FASTA file")
    builder = _Builder(input_type, chunk_size, Path(spool_dir) if spool_dir else None)
    try:
        for file_number, path in enumerate(files):
            builder.add_file(file_number, path)
        return builder.finish(files)
    except BaseException:
        if builder.owned_spool is not None:
            rmtree(builder.owned_spool, ignore_errors=True)
        raise
