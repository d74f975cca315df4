"""IterableDatasets that split work by batch or record, never by file.

Nothing in them changes while iterating: a worker's share is a pure function of the plan and
the worker number, so nothing can be lost in worker copies (lesson 1 of the previous design,
where a buffering collator copied into workers lost the sequences left in each copy).
"""

import os
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from virnucpro.data.dataloader_utils import check_worker_cuda_isolation
from virnucpro.data.index import SequenceIndex, build_index
from virnucpro.data.packed_batch import pack_residues

READ_AHEAD = 256
"""Sequences a SequenceDataset reads per call (DNA frames are translated together)."""


def _worker_share() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def batches_of_worker(num_batches: int, worker: int, num_workers: int) -> range:
    """Plan positions worker `worker` of `num_workers` builds: every num_workers-th batch."""
    return range(worker, num_batches, num_workers)


def records_of_worker(
    num_records: int, rank: int, world_size: int, worker: int, num_workers: int
) -> range:
    """Input indices of one worker of one rank: record i goes to rank i % world_size, then to
    worker (i // world_size) % num_workers."""
    return range(rank + world_size * worker, num_records, world_size * num_workers)


class PackedBatchDataset(IterableDataset):
    """Packed batches of a plan (`plan_batches`, or a rank's `split_for_rank` share).

    Batch `b` is built by DataLoader worker `b % num_workers`; the DataLoader takes one batch
    from each worker in turn, so it yields the batches in plan order. Use
    `create_async_dataloader(dataset, batch_size=None, ...)`. In a worker the arrays are
    yielded as numpy (the pipe carries them ~3x faster than tensors through shared memory);
    `create_async_dataloader`, or a plain DataLoader's default conversion, makes them tensors.
    """

    def __init__(
        self, index: SequenceIndex, batches: Sequence[np.ndarray], max_length: int = 1022
    ) -> None:
        self.index = index
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        check_worker_cuda_isolation()
        worker, num_workers = _worker_share()
        in_worker = get_worker_info() is not None
        for b in batches_of_worker(len(self.batches), worker, num_workers):
            indices = self.batches[b]
            residues = self.index.read_many(indices)
            ids = self.index.ids_of(indices)
            yield pack_residues(residues, ids, indices, self.max_length, as_numpy=in_worker)


class SequenceDataset(IterableDataset):
    """Sequences as `{'id', 'sequence', 'file', 'index', 'truncated'}` dicts, for VarlenCollator.

    Takes FASTA paths (indexed here, in the main process, so bad input fails before any
    worker starts) or a built SequenceIndex. Sequence `i` goes to rank `i % world_size`, and
    within a rank to worker `(i // world_size) % num_workers`: one big file uses every worker.
    `sequence` is upper-cased and cut to `max_length` residues (0 = no cut); `index` is the
    input index, so the order is recoverable whatever the workers.
    """

    def __init__(
        self,
        fasta_files: SequenceIndex | Sequence[str | os.PathLike] | str | os.PathLike,
        max_length: int = 1022,
        input_type: str = "protein",
        chunk_size: int = 300,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        if isinstance(fasta_files, SequenceIndex):
            self.index = fasta_files
        else:
            self.index = build_index(fasta_files, input_type, chunk_size)
        self.max_length = max_length
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[dict]:
        check_worker_cuda_isolation()
        worker, num_workers = _worker_share()
        file_of = self.index.file_of
        names = [path.name for path in self.index.files]
        share = records_of_worker(len(self.index), self.rank, self.world_size, worker, num_workers)
        for first in range(0, len(share), READ_AHEAD):
            indices = np.asarray(share[first : first + READ_AHEAD], dtype=np.int64)
            read = zip(
                indices.tolist(),
                self.index.ids_of(indices),
                self.index.read_many(indices),
                strict=True,
            )
            for i, name, residues in read:
                cut = residues[: self.max_length] if self.max_length else residues
                yield {
                    "id": name,
                    "sequence": cut.decode("utf-8", "surrogateescape"),
                    "file": names[file_of[i]],
                    "index": i,
                    "truncated": len(cut) < len(residues),
                }
