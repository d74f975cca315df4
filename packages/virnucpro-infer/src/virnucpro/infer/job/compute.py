"""What every computing process does with a session: load the model once, from the
description the lead recorded (no second checksum), and embed batches with
:func:`virnucpro.infer.embed_rank`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from virnucpro.infer.job.devices import DTYPES
from virnucpro.infer.job.setup import Session
from virnucpro.infer.packed import release_compile_workers
from virnucpro.infer.pipeline import CheckpointPolicy, RankOutcome, embed_rank
from virnucpro.infer.plugins import PluginHost
from virnucpro.infer.registry import PackedForward
from virnucpro.infer.windows import WindowedForward


def load_forward(session: Session, device: torch.device, plugins: PluginHost) -> PackedForward:
    """The run's model on ``device`` in its precision, compiled on CUDA (1.7x the eager
    speed on an H100: benchmarks/results)."""
    info = session.shared.model
    assert info is not None, "a session with work left has a described model"
    backend = plugins.model_registry().get(info.backend)
    manifest = session.manifest
    loaded = backend.load(info, device=device, dtype=DTYPES[manifest.precision])
    forward = backend.packed_forward(loaded, compile=device.type == "cuda")
    if manifest.long == "window":
        return WindowedForward(forward, manifest.max_length, manifest.window_overlap)
    return forward


def embed_batches(
    session: Session,
    batches: Sequence[np.ndarray],
    forward: PackedForward,
    device: torch.device,
    *,
    rank: int,
    world_size: int,
    workers: int,
    on_batch: Callable[[int, int], None],
    should_stop: Callable[[], bool],
) -> RankOutcome:
    manifest = session.manifest
    outcome = embed_rank(
        session.run_dir,
        manifest.to_dict(),
        session.index,
        batches,
        forward,
        device,
        rank=rank,
        world_size=world_size,
        policy=CheckpointPolicy(
            manifest.checkpoint_every, manifest.checkpoint_interval, manifest.checkpoint_bytes
        ),
        num_workers=workers,
        on_batch=on_batch,
        should_stop=should_stop,
    )
    # Nothing compiles after the batches: the compile processes stop while the output
    # is merged, not at exit.
    release_compile_workers()
    return outcome
