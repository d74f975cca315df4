"""Packed ESM-2 inference and the job engine: ``embed``/``resume``, the packed forward,
stream runner, GPU queue manager.

Names load on first use, so importing a torch-free part (``virnucpro.infer.job.config``,
the errors, the plugin hooks) does not import torch: the cli starts in milliseconds.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "virnucpro.infer.api": ("embed", "resume"),
    "virnucpro.infer.attention": (
        "ATTENTION_BACKENDS",
        "PaddedSDPAAttention",
        "SequenceLoopAttention",
        "VarlenFlashAttention",
        "select_attention",
    ),
    "virnucpro.infer.esm2_loading": ("fair_esm_cache_dir",),
    "virnucpro.infer.file_assignment": ("assign_files_by_size",),
    "virnucpro.infer.hookspecs": ("hookimpl",),
    "virnucpro.infer.job.config": ("Placement", "RunConfig"),
    "virnucpro.infer.job.engine": ("JobResult", "resume_job", "run_job"),
    "virnucpro.infer.job.errors": ("JobError", "RunStopped"),
    "virnucpro.infer.models": (
        "ESM2_ARCHITECTURES",
        "ESM2Architecture",
        "LoadedModel",
        "ModelInfo",
        "ModelLoadError",
    ),
    "virnucpro.infer.packed": ("PackedESM2", "resolve_layers"),
    "virnucpro.infer.pipeline": (
        "FINISHED",
        "STOPPED",
        "CheckpointPolicy",
        "RankOutcome",
        "embed_rank",
    ),
    "virnucpro.infer.plugins": ("PluginHost", "load_plugins"),
    "virnucpro.infer.pooling": ("POOLINGS", "pool_hidden_states"),
    "virnucpro.infer.queue_manager": (
        "BatchQueueManager",
        "QueueEvent",
        "QueueRunError",
        "WorkerStatus",
        "WorkUnit",
        "current_unit_attempt",
        "current_worker_slot",
    ),
    "virnucpro.infer.registry": (
        "ESM2Backend",
        "ModelBackend",
        "ModelRegistry",
        "PackedForward",
        "default_registry",
        "load_model",
    ),
    "virnucpro.infer.runner": (
        "AsyncInferenceRunner",
        "InferenceResult",
        "SequenceOutOfMemoryError",
    ),
    "virnucpro.infer.work_units": ("cut_into_units", "without_done"),
    "virnucpro.infer.writers": ("OutputWriter", "WriterRegistry"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'virnucpro.infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
