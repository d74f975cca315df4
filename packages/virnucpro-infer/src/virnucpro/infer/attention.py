"""Attention over packed sequences that never crosses a sequence boundary.

Three backends share one interface: `prepare(layout)` once per batch, then
`attend(q, k, v, prepared)` per layer with q, k, v of shape (T, H, head_dim).
`applies_scale` says whether the kernel multiplies scores by head_dim**-0.5 itself;
when it does not, the caller scales q before rotary, exactly as fair-esm does.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from virnucpro.infer.packed_layout import PackedLayout


def torch_varlen_attn() -> Callable[..., Any] | None:
    """torch's varlen flash attention, None before torch 2.9. Imported on first use:
    importing it imports torch's compiler (about 0.9 s on a 2-core host), which a CPU run,
    or a command that computes nothing, does not need."""
    try:
        return importlib.import_module("torch.nn.attention.varlen").varlen_attn
    except (ImportError, AttributeError):
        return None


class AttentionBackend(Protocol):
    name: str
    applies_scale: bool

    def prepare(self, layout: PackedLayout) -> Any: ...

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared: Any
    ) -> torch.Tensor: ...


def varlen_accepts_scale(function: Any) -> bool:
    """torch 2.9's varlen_attn had no `scale` (it always used head_dim**-0.5); later
    versions take `scale` as a keyword."""
    return "scale" in inspect.signature(function).parameters


class VarlenFlashAttention:
    """CUDA flash attention on the packed tokens (bf16/fp16) via torch.nn.attention.varlen."""

    name = "varlen"

    def __init__(self, function: Callable[..., Any] | None = None):
        chosen = function or torch_varlen_attn()
        if chosen is None:
            raise ValueError("this torch has no torch.nn.attention.varlen; use attention='sdpa'")
        self._function: Callable[..., Any] = chosen
        self._takes_scale = varlen_accepts_scale(self._function)
        self.applies_scale = not self._takes_scale

    def prepare(self, layout: PackedLayout) -> PackedLayout:
        return layout

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared: PackedLayout
    ) -> torch.Tensor:
        extra = {"scale": 1.0} if self._takes_scale else {}
        cu, longest = prepared.cu_seqlens, prepared.max_seqlen
        return self._function(q, k, v, cu, cu, longest, longest, **extra)


class PaddedSDPAAttention:
    """Scatter the packed tokens into a padded (B, H, L, head_dim) block, run
    scaled_dot_product_attention with a key mask, gather back. Works on any device."""

    name = "sdpa"
    applies_scale = False

    def prepare(self, layout: PackedLayout) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        longest = layout.max_seqlen
        slots = layout.sequence_index * longest + layout.positions
        key_mask = torch.arange(longest, device=slots.device) < layout.lengths[:, None]
        return slots, key_mask[:, None, None, :], layout.num_sequences, longest

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        prepared: tuple[torch.Tensor, torch.Tensor, int, int],
    ) -> torch.Tensor:
        slots, key_mask, batch, longest = prepared
        heads, head_dim = q.shape[1], q.shape[2]

        def pad(x: torch.Tensor) -> torch.Tensor:
            block = x.new_zeros(batch * longest, heads, head_dim).index_copy_(0, slots, x)
            return block.view(batch, longest, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), key_mask, scale=1.0)
        return out.transpose(1, 2).reshape(batch * longest, heads, head_dim)[slots]


class SequenceLoopAttention:
    """One sequence at a time with fair-esm's own arithmetic (bmm, fp32 softmax, bmm):
    the CPU path, and the closest match to fair-esm's forward."""

    name = "loop"
    applies_scale = False

    def prepare(self, layout: PackedLayout) -> list[int]:
        return layout.cu_seqlens.tolist()

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared: list[int]
    ) -> torch.Tensor:
        outputs = []
        for start, stop in itertools.pairwise(prepared):
            qs, ks, vs = (x[start:stop].transpose(0, 1) for x in (q, k, v))
            scores = torch.bmm(qs, ks.transpose(1, 2))
            probs = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores)
            outputs.append(torch.bmm(probs, vs).transpose(0, 1))
        return torch.cat(outputs, dim=0)


ATTENTION_BACKENDS = ("auto", "varlen", "sdpa", "loop")


def select_attention(name: str, device: torch.device, dtype: torch.dtype) -> AttentionBackend:
    """`auto`: varlen flash attention on CUDA in bf16/fp16 where torch has it, padded
    SDPA on CUDA otherwise, the per-sequence loop on CPU."""
    if name == "auto":
        if device.type != "cuda":
            name = "loop"
        elif torch_varlen_attn() is not None and dtype in (torch.bfloat16, torch.float16):
            name = "varlen"
        else:
            name = "sdpa"
    if name == "varlen":
        if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
            raise ValueError("attention='varlen' needs a CUDA model in bf16 or fp16")
        return VarlenFlashAttention()
    if name == "sdpa":
        return PaddedSDPAAttention()
    if name == "loop":
        return SequenceLoopAttention()
    raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
