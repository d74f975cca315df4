"""ESM-2's forward on 1-D packed tokens, using fair-esm's own modules and weights.

The arithmetic follows `esm.model.esm2.ESM2.forward` step by step (token-dropout
rescale, q scaled by head_dim**-0.5 before rotary, fp32 softmax, erf GELU,
`emb_layer_norm_after` on the last layer); only the layout differs: tokens of many
sequences lie end to end, rotary positions restart at each sequence and attention
stays inside it. Rotary is applied in fp32 whatever the model's precision.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from esm.modules import gelu

from virnucpro.infer.attention import AttentionBackend, select_attention
from virnucpro.infer.packed_layout import PackedLayout, build_layout

_MASK_RATIO_TRAIN = 0.15 * 0.8
_FINISH_WEIGHTS = 8

_Project = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
_Step = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
_Finish = Callable[..., torch.Tensor]
_Weights = tuple[torch.Tensor, ...]


# The parts of fair-esm's ESM2 the packed forward reads. fair-esm has no type
# annotations and nn.Module types every submodule attribute as `Tensor | Module`, so the
# model is viewed through these once, where it comes in.
class _Affine(Protocol):
    weight: torch.Tensor
    bias: torch.Tensor


class _LayerNorm(_Affine, Protocol):
    eps: float


class _RotaryEmbedding(Protocol):
    inv_freq: torch.Tensor


class _SelfAttention(Protocol):
    q_proj: _Affine
    k_proj: _Affine
    v_proj: _Affine
    out_proj: _Affine
    rot_emb: _RotaryEmbedding
    num_heads: int
    head_dim: int
    scaling: float


class _Layer(Protocol):
    self_attn: _SelfAttention
    self_attn_layer_norm: _LayerNorm
    final_layer_norm: _LayerNorm
    fc1: _Affine
    fc2: _Affine


class _ESM2(Protocol):
    embed_tokens: torch.nn.Embedding
    emb_layer_norm_after: Callable[[torch.Tensor], torch.Tensor]
    layers: Sequence[_Layer]
    num_layers: int
    embed_scale: float
    token_dropout: bool
    mask_idx: int


# torch.compile options per `compile_mode`. "tuned" lets inductor search the launch
# configs of its layer-norm and pointwise kernels (coordinate descent). On an H200 it
# measured no better than "plain" beyond run-to-run spread, at twice the compile time
# (benchmarks/results/forward_variants_h200*.json), so "plain" is the default.
COMPILE_MODES: dict[str, dict[str, bool]] = {
    "plain": {},
    "tuned": {"coordinate_descent_tuning": True},
}
DEFAULT_COMPILE_MODE = "plain"


def resolve_layers(layers: Iterable[int], num_layers: int) -> tuple[int, ...]:
    """fair-esm numbering: 0 is the embedding output, `num_layers` the last block (after
    emb_layer_norm_after); negatives count from the end (-1 is the last layer)."""
    resolved = set()
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"layer {layer} does not exist: this model has layers 0..{num_layers} "
                f"(or -{num_layers + 1}..-1 counted from the end)"
            )
        resolved.add(layer % (num_layers + 1))
    return tuple(sorted(resolved))


def rotary_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T, 1, head_dim) in fp32 from the model's own stored
    frequencies, as fair-esm's RotaryEmbedding uses them (published ESM-2 weights carry
    them rounded to fp16: recomputing them from the formula moves long sequences)."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device)[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


def _make_block_functions(
    num_heads: int, q_scale: float, eps: float
) -> tuple[_Project, _Step, _Finish]:
    """A transformer block cut at attention, as functions of tensors only, so one
    torch.compile serves every layer (no recompiles per layer).

    `project` opens the first block (layer norm, q/k/v, rotary); `step` closes block i
    and opens block i + 1, so that block i's last residual add and block i + 1's layer
    norm are one compiled region (one pass over the tokens, not two); `finish` closes
    the last block."""

    def project(
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ln_w: torch.Tensor,
        ln_b: torch.Tensor,
        wq: torch.Tensor,
        bq: torch.Tensor,
        wk: torch.Tensor,
        bk: torch.Tensor,
        wv: torch.Tensor,
        bv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, dim = x.shape
        h = F.layer_norm(x, (dim,), ln_w, ln_b, eps)
        q = F.linear(h, wq, bq)
        if q_scale != 1.0:
            q = q * q_scale
        q = _apply_rotary(q.view(tokens, num_heads, dim // num_heads), cos, sin)
        k = _apply_rotary(F.linear(h, wk, bk).view(tokens, num_heads, dim // num_heads), cos, sin)
        v = F.linear(h, wv, bv).view(tokens, num_heads, dim // num_heads)
        return q, k, v

    def finish(
        x: torch.Tensor,
        attended: torch.Tensor,
        wo: torch.Tensor,
        bo: torch.Tensor,
        ln_w: torch.Tensor,
        ln_b: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
    ) -> torch.Tensor:
        x = x + F.linear(attended.reshape(x.shape), wo, bo)
        h = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)
        return x + F.linear(gelu(F.linear(h, w1, b1)), w2, b2)

    def step(
        x: torch.Tensor,
        attended: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = finish(x, attended, *weights[:_FINISH_WEIGHTS])
        return (x, *project(x, cos, sin, *weights[_FINISH_WEIGHTS:]))

    return project, step, finish


RELEASE_THREAD_NAME = "release-compile-workers"


def release_compile_workers() -> None:
    """Shut inductor's compile processes down on a background thread, for a caller that
    will compile nothing more (a session's batches are done): left running, their
    shutdown at exit held the end of a run for 2.6-5 s on an H200 host (py-spy), while
    the merge can overlap it. Quiescing them (inductor's idle mode) left the exit as
    slow (1.4 s against 0.65 s, a CPU host). A later compilation starts a new pool."""
    compiler = sys.modules.get("torch._inductor.async_compile")
    if compiler is None:  # nothing compiled here: no pool, and no import to pay for
        return
    shutdown = compiler.shutdown_compile_workers
    threading.Thread(target=shutdown, name=RELEASE_THREAD_NAME, daemon=True).start()


def _mark_tokens_dynamic(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)


def _layer_weights(layer: _Layer) -> tuple[_Weights, _Weights]:
    attn = layer.self_attn
    project = (
        layer.self_attn_layer_norm.weight,
        layer.self_attn_layer_norm.bias,
        attn.q_proj.weight,
        attn.q_proj.bias,
        attn.k_proj.weight,
        attn.k_proj.bias,
        attn.v_proj.weight,
        attn.v_proj.bias,
    )
    finish = (
        attn.out_proj.weight,
        attn.out_proj.bias,
        layer.final_layer_norm.weight,
        layer.final_layer_norm.bias,
        layer.fc1.weight,
        layer.fc1.bias,
        layer.fc2.weight,
        layer.fc2.bias,
    )
    return project, finish


def _shared_inv_freq(model: _ESM2) -> torch.Tensor:
    """The rotary frequencies every layer stores (float32); one table serves all."""
    stored = [layer.self_attn.rot_emb.inv_freq.detach().float() for layer in model.layers]
    if any(not torch.equal(stored[0], other) for other in stored[1:]):
        raise ValueError(
            "the model's layers store different rotary frequencies; the packed forward "
            "shares one table across layers and cannot run it exactly"
        )
    return stored[0]


class PackedESM2:
    """Callable `(input_ids, cu_seqlens, max_seqlen, repr_layers) -> {layer: (T, D)}`.

    `model` is a fair-esm `ESM2` already on its device and in its precision; its
    parameters are used in place. `attention` is one of `auto`, `varlen`, `sdpa`,
    `loop`, or an `AttentionBackend` instance. `compile=True` compiles the per-layer
    computation with `compile_mode`'s options (one compilation shared by all layers;
    the token count is symbolic from the first batch on, so batches of any size reuse it).
    The LM and contact heads never run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attention: str | AttentionBackend = "auto",
        compile: bool = False,
        compile_mode: str = DEFAULT_COMPILE_MODE,
    ):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown compile_mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}"
            )
        self.model = model
        esm2 = self._esm2 = cast(_ESM2, model)
        reference = esm2.embed_tokens.weight
        self.device, self.dtype = reference.device, reference.dtype
        self.attention: AttentionBackend = (
            select_attention(attention, self.device, self.dtype)
            if isinstance(attention, str)
            else attention
        )
        first = esm2.layers[0]
        self.num_heads = first.self_attn.num_heads
        self.head_dim = first.self_attn.head_dim
        q_scale = 1.0 if self.attention.applies_scale else first.self_attn.scaling
        project, step, finish = _make_block_functions(
            self.num_heads, q_scale, first.self_attn_layer_norm.eps
        )
        self._heuristics: Callable[[], AbstractContextManager[None]] = nullcontext
        if compile:
            from virnucpro.infer import inductor_heuristics  # imports inductor: compile only

            options = {**COMPILE_MODES[compile_mode], **inductor_heuristics.compile_options()}
            project = torch.compile(project, options=options)
            step = torch.compile(step, options=options)
            finish = torch.compile(finish, options=options)
            self._heuristics = inductor_heuristics.heuristics
        self._project, self._step, self._finish = project, step, finish
        # Marking the token dim dynamic up front compiles once, not once static and
        # again dynamic; weight dims stay static (dynamic=True made every dim symbolic
        # and measured 278K vs 325K tokens/s on 650M, H100).
        self._mark_dynamic = compile
        self._weights = [_layer_weights(layer) for layer in esm2.layers]
        self._inv_freq = _shared_inv_freq(esm2)

    @property
    def num_layers(self) -> int:
        return self._esm2.num_layers

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Iterable[int] = (-1,),
    ) -> dict[int, torch.Tensor]:
        if input_ids.ndim != 1:
            raise ValueError("input_ids must be 1-D packed tokens (BOS + residues + EOS each)")
        with self._heuristics():
            return self._forward(input_ids, cu_seqlens, max_seqlen, repr_layers)

    def _forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Iterable[int],
    ) -> dict[int, torch.Tensor]:
        wanted = resolve_layers(repr_layers, self.num_layers)
        layout = build_layout(cu_seqlens, max_seqlen, input_ids.shape[0])
        x = self._embed(input_ids, layout)
        representations = {0: x} if 0 in wanted else {}
        deepest = max(wanted, default=0)
        if deepest == 0:
            return representations
        cos, sin = rotary_tables(layout.positions, self._inv_freq)
        prepared = self.attention.prepare(layout)
        if self._mark_dynamic:
            _mark_tokens_dynamic(x, cos, sin)
        q, k, v = self._project(x, cos, sin, *self._weights[0][0])
        for index in range(deepest):
            attended = self.attention.attend(q, k, v, prepared)
            if self._mark_dynamic:
                _mark_tokens_dynamic(x, attended)
            finish_weights = self._weights[index][1]
            if index + 1 < deepest:
                next_project = self._weights[index + 1][0]
                x, q, k, v = self._step(x, attended, cos, sin, *finish_weights, *next_project)
            else:
                x = self._finish(x, attended, *finish_weights)
            if index + 1 in wanted and index + 1 != self.num_layers:
                representations[index + 1] = x
        if self.num_layers in wanted:
            representations[self.num_layers] = self._esm2.emb_layer_norm_after(x)
        return representations

    def _embed(self, input_ids: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """embed_tokens, then fair-esm's token-dropout rescale per sequence: <mask>
        positions zeroed, all scaled by 0.88 / (1 - that sequence's mask ratio)."""
        model = self._esm2
        x = model.embed_scale * model.embed_tokens(input_ids)
        if not model.token_dropout:
            return x
        is_mask = input_ids == model.mask_idx
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        mask_counts = torch.zeros(layout.num_sequences, dtype=torch.int64, device=x.device)
        mask_counts.index_add_(0, layout.sequence_index, is_mask.to(torch.int64))
        mask_ratio = mask_counts.to(x.dtype) / layout.lengths
        return x * (1 - _MASK_RATIO_TRAIN) / (1 - mask_ratio)[layout.sequence_index, None]
