"""torch's compiler imports on a thread beside the set-up: real modules, a real thread."""

import subprocess
import sys
import threading
import time

import pytest
import torch

from virnucpro.infer.job.compiler_imports import CompilerImports
from virnucpro.infer.job.devices import Target
from virnucpro.infer.job.executors import LocalExecutor

RECORDER = """
import threading, time
time.sleep({sleep})
IMPORTED_ON = threading.current_thread().name
"""


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write importable modules ``name -> seconds their import takes``; forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(**sleeps: float) -> tuple[str, ...]:
        for name, sleep in sleeps.items():
            (tmp_path / f"{name}.py").write_text(RECORDER.format(sleep=sleep))
            written.append(name)
        return tuple(sleeps)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_the_modules_are_imported_on_their_own_thread_in_order(modules):
    names = modules(warm_a=0.05, warm_b=0.0)
    with CompilerImports(names) as imports:
        imports.wait()
        assert [sys.modules[name].IMPORTED_ON for name in names] == [
            "virnucpro-compiler-imports"
        ] * 2
    assert threading.current_thread().name != "virnucpro-compiler-imports"


def test_leaving_stops_after_the_module_being_imported(modules):
    names = modules(slow_first=0.3, never_reached=0.0)
    started = time.perf_counter()
    with CompilerImports(names):
        time.sleep(0.05)  # the first import is under way
    assert time.perf_counter() - started < 1.0
    assert "slow_first" in sys.modules and "never_reached" not in sys.modules


def test_a_missing_module_ends_the_warm_up_quietly(modules):
    names = ("not_a_module_anywhere", *modules(after_missing=0.0))
    with CompilerImports(names) as imports:
        imports.wait()
    assert "after_missing" not in sys.modules


def test_only_a_gpu_session_imports_beside_its_set_up():
    executor = LocalExecutor([Target(torch.device("cpu"), "cpu")], workers=0)
    with executor.beside_set_up():
        assert executor.compiler is None
        assert not any(t.name == "virnucpro-compiler-imports" for t in threading.enumerate())
    executor.compiler_ready()  # nothing to wait for


GPU_SESSION = """
import subprocess
import sys
import torch
from virnucpro.infer.job.compiler_imports import COMPILER_MODULES
from virnucpro.infer.job.devices import Target
from virnucpro.infer.job.executors import LocalExecutor

before = [name for name in COMPILER_MODULES if name in sys.modules]
executor = LocalExecutor([Target(torch.device("cuda", 0), "gpu0", "0")], workers=0)
with executor.beside_set_up():
    executor.compiler_ready()
    after = [name for name in COMPILER_MODULES if name not in sys.modules]
print(before, after)
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_session_has_every_compiler_module_before_its_model_is_built():
    done = subprocess.run(
        [sys.executable, "-c", GPU_SESSION], capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[-2] == "[] []", done.stdout + done.stderr
