"""The inductor heuristics the packed forward compiles under: its layer norms as
persistent reductions.

Inductor keeps a whole row in registers (one pass over it) only for rows up to 1024
wide; ESM-2's layer norms are 1280 (650M) and 2560 (3B) wide, so they looped, reading
each row twice. Persistent up to 4096 wide, on an H200 (forward alone, same run): 650M
351.9K -> 368.0K tokens/s and 3B 99.0K -> 101.5K, the norms' share of GPU time 12.6% ->
7.2% (650M), the worst cosine against fp32 unchanged
(benchmarks/results/forward_variants_h200_session19.json).

The handler is set on the calling thread only while the packed forward runs (its
compilation happens inside that call), so other compiled code in the process keeps
inductor's own choices. Inductor's FX graph cache does not key on the handler: a no-op
post-grad pass carries a hash of this file into the key, so kernels cached without these
heuristics (or with an earlier version of them) are never taken for them, nor these for
code compiled without them. Needs torch 2.6 or later (custom graph passes with a uuid).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

WIDEST_PERSISTENT_ROW = 4096


class WidePersistentReductions(InductorChoices):
    """Inductor's choices, but row reductions up to `WIDEST_PERSISTENT_ROW` wide are
    persistent (with multi-kernel on, inductor's own wider rule stands)."""

    @staticmethod
    def should_use_persistent_reduction(features: Any, cooperative_reduction: bool, *more: Any):
        row = features.get_reduction_hint() == ReductionHint.INNER
        triton = inductor_config.triton
        if (
            triton.persistent_reductions
            and row
            and not (cooperative_reduction or triton.multi_kernel)
        ):
            return V.graph.sizevars.statically_known_leq(
                features.reduction_numel, WIDEST_PERSISTENT_ROW
            )
        return InductorChoices.should_use_persistent_reduction(
            features, cooperative_reduction, *more
        )


class HeuristicsCacheKey(CustomGraphPass):
    """Changes no graph; its uuid makes the heuristics part of the FX graph cache key."""

    def __call__(self, graph: torch.fx.graph.Graph) -> None:
        return None

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))


WIDE_PERSISTENT_REDUCTIONS = WidePersistentReductions()
"""Stateless, as inductor's own choices are: one serves every call and thread."""


def compile_options() -> dict[str, Any]:
    """What `torch.compile` is given beside a compile mode's own options."""
    return {"post_grad_custom_post_pass": HeuristicsCacheKey()}


def heuristics() -> AbstractContextManager[None]:
    """The packed forward's inductor choices on this thread until the block exits."""
    return V.set_choices_handler(WIDE_PERSISTENT_REDUCTIONS)
