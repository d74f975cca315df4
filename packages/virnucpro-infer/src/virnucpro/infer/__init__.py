"""Packed ESM-2 inference: forward, stream runner, GPU queue manager."""

from virnucpro.infer.attention import (
    ATTENTION_BACKENDS,
    PaddedSDPAAttention,
    SequenceLoopAttention,
    VarlenFlashAttention,
    select_attention,
)
from virnucpro.infer.esm2_loading import fair_esm_cache_dir
from virnucpro.infer.file_assignment import assign_files_by_size
from virnucpro.infer.models import (
    ESM2_ARCHITECTURES,
    ESM2Architecture,
    LoadedModel,
    ModelInfo,
    ModelLoadError,
)
from virnucpro.infer.packed import PackedESM2, resolve_layers
from virnucpro.infer.pipeline import (
    FINISHED,
    STOPPED,
    CheckpointPolicy,
    RankOutcome,
    embed_rank,
)
from virnucpro.infer.pooling import POOLINGS, pool_hidden_states
from virnucpro.infer.queue_manager import (
    BatchQueueManager,
    QueueEvent,
    QueueRunError,
    WorkerStatus,
    WorkUnit,
    current_worker_slot,
)
from virnucpro.infer.registry import (
    ESM2Backend,
    ModelBackend,
    ModelRegistry,
    PackedForward,
    default_registry,
    load_model,
)
from virnucpro.infer.runner import (
    AsyncInferenceRunner,
    InferenceResult,
    SequenceOutOfMemoryError,
)
from virnucpro.infer.work_units import cut_into_units, without_done

__all__ = [
    "ATTENTION_BACKENDS",
    "ESM2_ARCHITECTURES",
    "FINISHED",
    "POOLINGS",
    "STOPPED",
    "AsyncInferenceRunner",
    "BatchQueueManager",
    "CheckpointPolicy",
    "ESM2Architecture",
    "ESM2Backend",
    "InferenceResult",
    "LoadedModel",
    "ModelBackend",
    "ModelInfo",
    "ModelLoadError",
    "ModelRegistry",
    "PackedESM2",
    "PackedForward",
    "PaddedSDPAAttention",
    "QueueEvent",
    "QueueRunError",
    "RankOutcome",
    "SequenceLoopAttention",
    "SequenceOutOfMemoryError",
    "VarlenFlashAttention",
    "WorkUnit",
    "WorkerStatus",
    "assign_files_by_size",
    "current_worker_slot",
    "cut_into_units",
    "default_registry",
    "embed_rank",
    "fair_esm_cache_dir",
    "load_model",
    "pool_hidden_states",
    "resolve_layers",
    "select_attention",
    "without_done",
]
