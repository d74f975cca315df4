"""torch's compiler imported on a thread while the lead sets the session up.

A compiled run's first batch waits for dynamo and inductor to import (sympy, networkx,
inductor's lowerings, triton: seconds of one core), and nothing before the model needs
them. The set-up before it (index, manifest, checkpoint scan) is numpy, hashing and
HDF5, which touch none of these modules, so the imports run beside it instead of after
it. Only modules are imported: nothing compiles and no state changes. The process
waits for the thread before it builds its model, so no two threads import these
modules at once (torch's circular imports could otherwise meet halfway).
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import TracebackType

log = logging.getLogger(__name__)

COMPILER_MODULES = (
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "torch._inductor.codecache",
    "triton",
    "torch._inductor.runtime.triton_heuristics",
    "torch._inductor.codegen.triton",
    "virnucpro.infer.inductor_heuristics",
)
"""In the order the first compiled call needs them; one missing (no triton on this
machine) ends the warm-up there, and the compile path imports what it needs itself."""


class CompilerImports:
    """A context for a session: entering starts the imports, ``wait`` joins them, and
    leaving stops them after the module being imported (a session that had nothing to
    compute does not wait for the rest)."""

    def __init__(self, modules: tuple[str, ...] = COMPILER_MODULES) -> None:
        self._modules = modules
        self._cancelled = threading.Event()
        self._thread = threading.Thread(
            target=self._import_all, name="virnucpro-compiler-imports", daemon=True
        )

    def __enter__(self) -> CompilerImports:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._cancelled.set()
        self._thread.join()

    def wait(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()

    def _import_all(self) -> None:
        for name in self._modules:
            if self._cancelled.is_set():
                return
            try:
                importlib.import_module(name)
            except Exception as exc:  # the compile path imports, and reports, for itself
                log.debug("compiler warm-up stopped at %s: %s", name, exc)
                return
