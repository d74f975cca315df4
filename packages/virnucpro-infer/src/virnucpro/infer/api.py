"""The Python API: embed FASTA files into a run directory, or continue one.

    from virnucpro.infer import embed
    from virnucpro.ckpt import open_embeddings

    path = embed(["proteins.fasta"], "runs/x", model="esm2_t33_650M_UR50D")
    with open_embeddings(path) as result:
        vector = result["my_protein"]

The same engine as ``virnucpro run``: checkpoints, resume after a kill, several GPUs
(``gpus="all"``), torchrun ranks. Keyword defaults are :class:`RunConfig`'s and
:class:`Placement`'s own. Errors are :class:`virnucpro.infer.job.errors.JobError`
subclasses, one line each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from virnucpro.infer.job.config import Placement, RunConfig, as_gpu_spec
from virnucpro.infer.job.engine import resume_job, run_job
from virnucpro.infer.job.gpus import GpuSpec
from virnucpro.infer.job.reporting import Reporter, StopFlag, never
from virnucpro.infer.plugins import PluginHost

PathLike = str | os.PathLike


def embed(
    inputs: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    model: str = RunConfig.model,
    random_weights: bool = RunConfig.random_weights,
    seed: int = RunConfig.seed,
    input_type: str = RunConfig.input_type,
    chunk_size: int = RunConfig.chunk_size,
    strict: bool = RunConfig.strict,
    layers: Sequence[int] | str | None = RunConfig.layers,
    pooling: Sequence[str] = RunConfig.pooling,
    precision: str = RunConfig.precision,
    token_budget: int | None = RunConfig.token_budget,
    max_length: int = RunConfig.max_length,
    long: str = RunConfig.long,
    window_overlap: int = RunConfig.window_overlap,
    checkpoint_every: int = RunConfig.checkpoint_every,
    checkpoint_interval: float = RunConfig.checkpoint_interval,
    checkpoint_bytes: int = RunConfig.checkpoint_bytes,
    store_dtype: str = RunConfig.store_dtype,
    compression: str = RunConfig.compression,
    output_format: str = RunConfig.output_format,
    keep_checkpoints: bool = RunConfig.keep_checkpoints,
    device: str = Placement.device,
    gpus: str | Sequence[int] | GpuSpec = Placement.gpus,
    processes: int = Placement.processes,
    workers: int = Placement.workers,
    stall_timeout: float = Placement.stall_timeout,
    force: bool = False,
    reporter: Reporter | None = None,
    should_stop: StopFlag = never,
    plugins: PluginHost | None = None,
) -> Path:
    """Embed every sequence of ``inputs`` into the run directory ``output``; return the
    path of the finished result (``output/embeddings.h5`` for the default format).

    A run directory that already holds this very run, complete, is returned as it is;
    one holding another run is refused unless ``force`` (the old run is moved beside
    it). Interrupted (``should_stop``), the run raises ``RunStopped``; continue it with
    :func:`resume`.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    config = RunConfig(
        inputs=tuple(Path(p) for p in paths),
        model=model,
        random_weights=random_weights,
        seed=seed,
        input_type=input_type,
        chunk_size=chunk_size,
        strict=strict,
        layers=layers if layers is None or isinstance(layers, str) else tuple(layers),
        pooling=tuple(pooling),
        precision=precision,
        token_budget=token_budget,
        max_length=max_length,
        long=long,
        window_overlap=window_overlap,
        checkpoint_every=checkpoint_every,
        checkpoint_interval=checkpoint_interval,
        checkpoint_bytes=checkpoint_bytes,
        store_dtype=store_dtype,
        compression=compression,
        output_format=output_format,
        keep_checkpoints=keep_checkpoints,
    )
    placement = _placement(device, gpus, processes, workers, stall_timeout)
    return run_job(
        config,
        Path(output),
        placement,
        force=force,
        plugins=plugins,
        reporter=reporter,
        should_stop=should_stop,
    ).output


def resume(
    run_dir: PathLike,
    *,
    device: str = Placement.device,
    gpus: str | Sequence[int] | GpuSpec = Placement.gpus,
    processes: int = Placement.processes,
    workers: int = Placement.workers,
    stall_timeout: float = Placement.stall_timeout,
    reporter: Reporter | None = None,
    should_stop: StopFlag = never,
    plugins: PluginHost | None = None,
) -> Path:
    """Continue the run in ``run_dir`` from its manifest and checkpoints; return the
    path of the finished result."""
    placement = _placement(device, gpus, processes, workers, stall_timeout)
    return resume_job(
        Path(run_dir), placement, plugins=plugins, reporter=reporter, should_stop=should_stop
    ).output


def _placement(
    device: str,
    gpus: str | Sequence[int] | GpuSpec,
    processes: int,
    workers: int,
    stall_timeout: float,
) -> Placement:
    return Placement(
        device=device,
        gpus=as_gpu_spec(gpus),
        processes=processes,
        workers=workers,
        stall_timeout=stall_timeout,
    )
