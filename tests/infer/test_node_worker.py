"""A queue worker's unit handler: a unit handed out again skips what its dead worker wrote."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch

from virnucpro.ckpt import merge_checkpoints, resume_from_checkpoints
from virnucpro.data import plan_batches
from virnucpro.infer import queue_manager
from virnucpro.infer.job.compute import embed_batches, load_forward
from virnucpro.infer.job.config import RunConfig
from virnucpro.infer.job.devices import Target
from virnucpro.infer.job.node_worker import embedding_worker
from virnucpro.infer.job.reporting import LoggingReporter
from virnucpro.infer.job.setup import set_up_run
from virnucpro.infer.plugins import load_plugins

AMINO = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


@pytest.fixture
def session(tmp_path):
    rng = np.random.default_rng(2)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(
        "".join(
            f">p{i}\n{AMINO[rng.integers(0, 20, int(rng.integers(8, 40)))].tobytes().decode()}\n"
            for i in range(24)
        )
    )
    config = RunConfig(
        inputs=(fasta,),
        model="esm2_t6_8M_UR50D",
        random_weights=True,
        seed=3,
        token_budget=120,
        checkpoint_every=4,
    )
    plugins = load_plugins(os.environ)
    target = Target(torch.device("cpu"), "cpu0")
    return set_up_run(config, tmp_path / "run", target, plugins, LoggingReporter(), False)


@pytest.fixture
def handler(session):
    """The real handler, as a worker process makes it (its signal settings undone)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield embedding_worker(
            torch.device("cpu"), session=session, stop=threading.Event(), world_size=2
        )
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_unit_handed_out_again_skips_the_rows_its_dead_worker_checkpointed(
    session, handler, monkeypatch
):
    batches = plan_batches(session.index.lengths, session.manifest.token_budget)
    assert len(batches) >= 3
    # The first worker checkpointed the unit's first two batches, then died.
    forward = load_forward(session, torch.device("cpu"), load_plugins(os.environ))
    embed_batches(
        session,
        batches[:2],
        forward,
        torch.device("cpu"),
        rank=1,
        world_size=2,
        workers=0,
        on_batch=lambda *_: None,
        should_stop=lambda: False,
    )
    monkeypatch.setattr(queue_manager, "_unit_attempt", 1)
    reported: list[int] = []
    result = handler(batches, lambda n, tokens=0: reported.append(n))
    done_before = sum(len(b) for b in batches[:2])
    assert result.skipped == done_before and result.sequences == 24 - done_before
    assert sum(reported) == 24  # the skipped rows count as progress once
    found = resume_from_checkpoints(session.run_dir, quarantine=False)
    assert np.array_equal(np.sort(found.done_indices), np.arange(24))
    merge_checkpoints(session.run_dir)  # every row exactly once
