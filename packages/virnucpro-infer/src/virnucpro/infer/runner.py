"""The stream runner: packed batches in, pooled embeddings out, the GPU never idle.

On CUDA the next batch is copied to the device on a side stream while the current
one computes on the compute stream; results are read only after an event recorded
on the compute stream after their device-to-host copy (lesson 3: embeddings read
before the compute stream finished). That event wait is the one host sync per
batch. On CPU the same code runs with no streams and no events.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from virnucpro.infer.batch_split import PackedBatch, split_packed_batch
from virnucpro.infer.pooling import check_poolings, pool_hidden_states
from virnucpro.infer.registry import PackedForward

STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class InferenceResult:
    """The outputs of one loader batch, rows in the batch's sequence order.

    `outputs` maps `layer_{L}/{pooling}` to arrays of the stored dtype (N x D), and for
    per-token pooling `layer_{L}/per_token` (sum of lengths x D) with
    `layer_{L}/per_token_offsets` (N+1, relative to this batch).
    """

    batch_index: int
    indices: np.ndarray
    sequence_ids: list[str]
    lengths: np.ndarray
    truncated: np.ndarray
    outputs: dict[str, np.ndarray]

    @property
    def num_sequences(self) -> int:
        return len(self.sequence_ids)


class SequenceOutOfMemoryError(RuntimeError):
    """One sequence alone does not fit in device memory; the run cannot go on without it."""

    def __init__(self, sequence_id: str, index: int, length: int) -> None:
        super().__init__(
            f"sequence {sequence_id!r} (input index {index}, {length} residues) does not fit "
            "in device memory even alone: lower --max-length, use a lower precision, or a "
            "device with more memory"
        )
        self.sequence_id = sequence_id
        self.index = index
        self.length = length


@dataclass
class _Staged:
    """A batch whose device copy has been enqueued (on the copy stream on CUDA)."""

    batch: PackedBatch
    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    copied: torch.cuda.Event | None


@dataclass
class _Pending:
    """A batch whose forward, pooling and device-to-host copy have been enqueued."""

    batch: PackedBatch
    batch_index: int
    host_outputs: dict[str, torch.Tensor]
    copied_back: torch.cuda.Event | None


class AsyncInferenceRunner:
    """Runs a packed forward over a loader's batches and yields `InferenceResult`s.

    Results come in loader order, one per loader batch. A batch that runs out of
    memory is split in halves and retried recursively (never dropped); a single
    sequence that still does not fit raises `SequenceOutOfMemoryError` naming it.
    Precision is the model's own (``load_model(..., dtype=...)``): no autocast, so no
    per-layer casts of weights or LayerNorm outputs on the hot path. Pooled outputs are
    cast to ``store_dtype`` on the device, so a float16 run copies half the bytes to
    the host (mean pooling still sums in float64; its float32 result is then cast).
    """

    def __init__(
        self,
        forward: PackedForward,
        device: torch.device | str,
        repr_layers: Sequence[int],
        poolings: Sequence[str] = ("mean",),
        enable_streams: bool = True,
        store_dtype: str = "float32",
    ) -> None:
        if not repr_layers:
            raise ValueError("no representation layers requested: give at least one layer")
        self.forward = forward
        self.device = torch.device(device)
        self.repr_layers = tuple(repr_layers)
        self.poolings = check_poolings(poolings)
        self.store_dtype = STORE_DTYPES[store_dtype]
        use_streams = enable_streams and self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if use_streams else None
        self._compute_stream = torch.cuda.Stream(self.device) if use_streams else None
        self._reset_statistics()

    def run(self, loader: Iterable[PackedBatch]) -> Iterator[InferenceResult]:
        """Yield one result per loader batch, in loader order."""
        self._reset_statistics()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._compute_stream is not None:
            # Weights were moved to the device on the caller's stream.
            self._compute_stream.wait_stream(torch.cuda.current_stream(self.device))
        self._started = time.perf_counter()
        batches = iter(loader)
        staged = self._stage_next(batches)
        in_flight: _Pending | None = None
        batch_index = 0
        while staged is not None:
            launched = self._launch(staged, batch_index)
            staged = self._stage_next(batches)
            if in_flight is not None:
                yield self._finish(in_flight)
            in_flight = launched
            batch_index += 1
        if in_flight is not None:
            yield self._finish(in_flight)

    def get_statistics(self) -> dict[str, Any]:
        """Counts and rates of the last (or current) run.

        `throughput` is packed tokens (BOS and EOS included) per second of wall time
        from the start of `run` to the last result; `data_wait_s` is the time spent
        waiting for the loader; `peak_memory_bytes` is None on CPU.
        """
        elapsed = self._elapsed_s
        peak = (
            int(torch.cuda.max_memory_allocated(self.device))
            if self.device.type == "cuda"
            else None
        )
        return {
            "total_batches": self._batches,
            "total_sequences": self._sequences,
            "total_tokens": self._tokens,
            "total_residues": self._residues,
            "elapsed_s": elapsed,
            "throughput": self._tokens / elapsed if elapsed > 0 else 0.0,
            "sequences_per_s": self._sequences / elapsed if elapsed > 0 else 0.0,
            "data_wait_s": self._data_wait_s,
            "oom_splits": self._oom_splits,
            "peak_memory_bytes": peak,
        }

    def _reset_statistics(self) -> None:
        self._batches = 0
        self._sequences = 0
        self._tokens = 0
        self._residues = 0
        self._oom_splits = 0
        self._data_wait_s = 0.0
        self._elapsed_s = 0.0
        self._started = time.perf_counter()

    def _stage_next(self, batches: Iterator[PackedBatch]) -> _Staged | None:
        waited_from = time.perf_counter()
        batch = next(batches, None)
        self._data_wait_s += time.perf_counter() - waited_from
        if batch is None:
            return None
        if self._copy_stream is None:
            return _Staged(
                batch, batch["input_ids"].to(self.device), batch["cu_seqlens"].to(self.device), None
            )
        batch = dict(batch)
        for key in ("input_ids", "cu_seqlens"):
            if not batch[key].is_pinned():
                batch[key] = batch[key].pin_memory()
        with torch.cuda.stream(self._copy_stream):
            input_ids = batch["input_ids"].to(self.device, non_blocking=True)
            cu_seqlens = batch["cu_seqlens"].to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        return _Staged(batch, input_ids, cu_seqlens, copied)

    def _launch(self, staged: _Staged, batch_index: int) -> _Pending:
        with torch.inference_mode():
            if self._compute_stream is None:
                outputs = self._pooled_outputs(staged.batch, staged.input_ids, staged.cu_seqlens)
                return _Pending(staged.batch, batch_index, outputs, None)
            assert staged.copied is not None, "with streams, staging records the copy's event"
            with torch.cuda.stream(self._compute_stream):
                self._compute_stream.wait_event(staged.copied)
                # Memory allocated on the copy stream is now used on the compute stream.
                staged.input_ids.record_stream(self._compute_stream)
                staged.cu_seqlens.record_stream(self._compute_stream)
                outputs = self._pooled_outputs(staged.batch, staged.input_ids, staged.cu_seqlens)
                host_outputs = {}
                for name, values in outputs.items():
                    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                    host.copy_(values, non_blocking=True)
                    host_outputs[name] = host
                copied_back = torch.cuda.Event()
                copied_back.record(self._compute_stream)
        return _Pending(staged.batch, batch_index, host_outputs, copied_back)

    def _pooled_outputs(
        self, batch: PackedBatch, input_ids: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        try:
            hidden = self.forward(input_ids, cu_seqlens, int(batch["max_seqlen"]), self.repr_layers)
            pooled = pool_hidden_states(hidden, cu_seqlens, self.poolings)
            return {
                name: values if name.endswith("_offsets") else values.to(self.store_dtype)
                for name, values in pooled.items()
            }
        except torch.OutOfMemoryError:
            if int(batch["num_sequences"]) == 1:
                raise SequenceOutOfMemoryError(
                    str(batch["sequence_ids"][0]),
                    int(batch["indices"][0]),
                    int(batch["lengths"][0]),
                ) from None
        # Retry outside the except block, so the failed attempt's tensors are freed.
        self._oom_splits += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        halves = split_packed_batch(batch, int(batch["num_sequences"]) // 2)
        parts = [
            self._pooled_outputs(
                half,
                half["input_ids"].to(self.device, non_blocking=True),
                half["cu_seqlens"].to(self.device, non_blocking=True),
            )
            for half in halves
        ]
        return _concatenate_outputs(parts)

    def _finish(self, pending: _Pending) -> InferenceResult:
        if pending.copied_back is not None:
            pending.copied_back.synchronize()
        batch = pending.batch
        result = InferenceResult(
            batch_index=pending.batch_index,
            indices=np.asarray(batch["indices"], dtype=np.int64),
            sequence_ids=list(batch["sequence_ids"]),
            lengths=np.asarray(batch["lengths"], dtype=np.int64),
            truncated=np.asarray(batch["truncated"], dtype=bool),
            outputs={name: values.numpy() for name, values in pending.host_outputs.items()},
        )
        self._batches += 1
        self._sequences += result.num_sequences
        self._tokens += int(batch["input_ids"].numel())
        self._residues += int(result.lengths.sum())
        self._elapsed_s = time.perf_counter() - self._started
        return result


def _concatenate_outputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join the outputs of consecutive sub-batches; offsets are shifted, not re-read."""
    joined = {}
    for name in parts[0]:
        if name.endswith("_offsets"):
            pieces = [parts[0][name]]
            for part in parts[1:]:
                pieces.append(part[name][1:] + pieces[-1][-1])
            joined[name] = torch.cat(pieces)
        else:
            joined[name] = torch.cat([part[name] for part in parts])
    return joined
