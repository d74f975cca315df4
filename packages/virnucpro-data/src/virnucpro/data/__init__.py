"""FASTA streaming, tokenizing and packing for ESM-2 (usable without the rest of virnucpro)."""

from virnucpro.data.collators import VarlenCollator
from virnucpro.data.dataloader_utils import (
    check_worker_cuda_isolation,
    create_async_dataloader,
    cuda_safe_worker_init,
)
from virnucpro.data.datasets import (
    PackedBatchDataset,
    SequenceDataset,
    batches_of_worker,
    records_of_worker,
)
from virnucpro.data.errors import InputError
from virnucpro.data.index import SequenceIndex, build_index
from virnucpro.data.nonstandard import NonstandardSummary
from virnucpro.data.packed_batch import pack_residues
from virnucpro.data.packing import (
    batch_tokens,
    packing_efficiency,
    plan_batches,
    sequence_costs,
    split_for_rank,
)
from virnucpro.data.reads import FRAME_LABELS, chunk_starts, kept_frames, translate_frame
from virnucpro.data.tokenizer import (
    BOS_IDX,
    EOS_IDX,
    ESM1B_TOKENS,
    MASK_IDX,
    PAD_IDX,
    UNK_IDX,
    tokenize,
)
from virnucpro.data.windows import window_counts, window_spans

__all__ = [
    "BOS_IDX",
    "EOS_IDX",
    "ESM1B_TOKENS",
    "FRAME_LABELS",
    "MASK_IDX",
    "PAD_IDX",
    "UNK_IDX",
    "InputError",
    "NonstandardSummary",
    "PackedBatchDataset",
    "SequenceDataset",
    "SequenceIndex",
    "VarlenCollator",
    "batch_tokens",
    "batches_of_worker",
    "build_index",
    "check_worker_cuda_isolation",
    "chunk_starts",
    "create_async_dataloader",
    "cuda_safe_worker_init",
    "kept_frames",
    "pack_residues",
    "packing_efficiency",
    "plan_batches",
    "records_of_worker",
    "sequence_costs",
    "split_for_rank",
    "tokenize",
    "translate_frame",
    "window_counts",
    "window_spans",
]
