"""The queue manager with real spawned CPU workers, real SIGKILLs and real work."""

import importlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.infer.queue_manager import (
    BatchQueueManager,
    QueueRunError,
    WorkerStatus,
    WorkUnit,
    device_spec,
)
from virnucpro.infer.runner import AsyncInferenceRunner

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
support = importlib.import_module("runner_support")

NUM_LAYERS = 2


def _square_units(count, size=3):
    return [
        WorkUnit(u, list(range(u * size, (u + 1) * size)), size, f"items {u * size}..")
        for u in range(count)
    ]


def _esm_units(records, units=4, batches_per_unit=6, batch_size=6):
    """Consecutive records: each unit a list of batches of (records, input indices)."""
    work, start = [], 0
    for u in range(units):
        batches = []
        for _ in range(batches_per_unit):
            batches.append(
                (records[start : start + batch_size], list(range(start, start + batch_size)))
            )
            start += batch_size
        first, last = records[batches[0][1][0]][0], records[start - 1][0]
        work.append(WorkUnit(u, batches, batches_per_unit * batch_size, f"ids {first}..{last}"))
    return work


def _embeddings(results):
    merged = {}
    for unit_result in results.values():
        for index, row in unit_result.items():
            assert index not in merged
            merged[index] = row
    return merged


def test_units_all_done_with_results_and_bound_devices():
    events = []
    manager = BatchQueueManager(support.square_worker, ["cpu", "cpu"])
    results = manager.run(_square_units(10), on_event=events.append)
    assert list(results) == list(range(10))
    for unit_id, result in results.items():
        assert result["squares"] == [x * x for x in range(unit_id * 3, unit_id * 3 + 3)]
        assert result["device"] == "cpu"
    ready = [e for e in events if e.kind == "ready"]
    assert ready and {e.worker.device for e in ready} == {"cpu"}
    states = manager.worker_states()
    assert sum(s.units_done for s in states.values()) == 10
    assert sum(s.sequences_done for s in states.values()) == 30
    assert {r["pid"] for r in results.values()} <= {s.pid for s in states.values()}
    assert manager.get_worker_status() == {0: WorkerStatus.COMPLETED, 1: WorkerStatus.COMPLETED}
    assert manager.is_complete()
    done = [e for e in events if e.kind == "unit_done"]
    assert sorted(e.unit_id for e in done) == list(range(10))


def test_a_free_worker_takes_more_units_than_a_slow_one():
    manager = BatchQueueManager(support.square_worker, ["cpu", "cpu"], {"slow_on": 0})
    results = manager.run(_square_units(12))
    slow_pid = results[0]["pid"]
    slow_units = sum(1 for r in results.values() if r["pid"] == slow_pid)
    assert slow_units <= 3, f"the worker on the slow unit still took {slow_units} of 12"


def test_a_killed_worker_is_respawned_and_the_output_is_identical():
    records = support.make_records(144, seed=21, min_len=20, max_len=90)
    units = _esm_units(records)
    kwargs = {"num_layers": NUM_LAYERS, "seed": 4}
    undisturbed = _embeddings(
        BatchQueueManager(support.esm_worker, ["cpu", "cpu"], kwargs).run(units)
    )

    events, killed = [], []

    def kill_once(event):
        events.append(event)
        if event.kind == "progress" and not killed:
            os.kill(event.worker.pid, signal.SIGKILL)
            killed.append((event.worker.worker_id, event.worker.pid, event.unit_id))

    manager = BatchQueueManager(support.esm_worker, ["cpu", "cpu"], kwargs)
    disturbed = _embeddings(manager.run(units, on_event=kill_once))

    [(worker_id, pid, unit_id)] = killed
    failed = [e for e in events if e.kind == "unit_failed"]
    assert [(e.worker.worker_id, e.unit_id) for e in failed] == [(worker_id, unit_id)]
    assert "killed by SIGKILL" in failed[0].detail
    assert failed[0].worker.sequences_done == failed[0].worker.units_done * 36
    assert manager.worker_states()[worker_id].respawns == 1
    assert manager.worker_states()[worker_id].pid != pid
    ready = [e.worker.pid for e in events if e.kind == "ready" and e.worker.worker_id == worker_id]
    # The respawned worker may find the work already finished by the other one.
    assert ready[0] == pid and len(ready) <= 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert sum(s.sequences_done for s in manager.worker_states().values()) == 144

    assert sorted(disturbed) == sorted(undisturbed) == list(range(144))
    for index in range(144):
        assert np.array_equal(disturbed[index], undisturbed[index])

    model = support.tiny_esm2(num_layers=NUM_LAYERS, seed=4)
    runner = AsyncInferenceRunner(support.ReferencePackedForward(model), "cpu", [NUM_LAYERS])
    batches = [support.packed_batch(r, i) for unit in units for r, i in unit.payload]
    for result in runner.run(batches):
        for index, row in zip(result.indices, result.outputs["layer_2/mean"], strict=True):
            np.testing.assert_allclose(disturbed[int(index)], row, rtol=0, atol=1e-6)


def test_a_unit_that_kills_its_worker_three_times_stops_the_run():
    events = []
    manager = BatchQueueManager(support.square_worker, ["cpu", "cpu"], {"crash_on": 13})
    with pytest.raises(QueueRunError, match=r"unit 4 \(items 12\.\.\) failed 3 times") as stop:
        manager.run(_square_units(8), on_event=events.append)
    assert "killed by SIGKILL" in str(stop.value)
    assert [u.unit_id for u in stop.value.units] == [4]
    assert [e.unit_id for e in events if e.kind == "unit_failed"] == [4, 4, 4]


def test_an_exception_in_a_unit_is_reported_with_its_message():
    manager = BatchQueueManager(support.square_worker, ["cpu"], {"raise_on": 2}, max_failures=2)
    with pytest.raises(QueueRunError, match="ValueError: cannot handle item 2"):
        manager.run(_square_units(2))
    assert manager.get_worker_status() == {0: WorkerStatus.FAILED}
    assert manager.worker_states()[0].respawns == 1


def test_every_worker_failing_three_times_stops_the_run():
    events = []
    manager = BatchQueueManager(support.failing_setup_worker, ["cpu", "cpu"])
    with pytest.raises(QueueRunError, match="every worker failed 3 times in a row") as stop:
        manager.run(_square_units(2), on_event=events.append)
    assert "model cannot be loaded on cpu" in str(stop.value)
    assert sorted(e.worker.worker_id for e in events if e.kind == "retired") == [0, 1]
    assert {s.respawns for s in manager.worker_states().values()} == {2}
    assert not manager.is_complete()


def test_devices_are_named_by_physical_index():
    assert device_spec(2) == "cuda:2"
    assert device_spec("cuda:3") == "cuda:3"
    assert device_spec(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="names no GPU"):
        device_spec("cuda")
    with pytest.raises(ValueError, match="no devices given"):
        BatchQueueManager(support.square_worker, [])
    with pytest.raises(ValueError, match="not unique"):
        BatchQueueManager(support.square_worker, ["cpu"]).run([WorkUnit(1, [], 0)] * 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_worker_runs_on_the_physical_gpu_it_was_given():
    last = torch.cuda.device_count() - 1
    events = []
    manager = BatchQueueManager(support.square_worker, [last], {})
    results = manager.run(_square_units(2), on_event=events.append)
    assert {r["device"] for r in results.values()} == {f"cuda:{last}"}
    assert [e.worker.device for e in events if e.kind == "ready"] == [f"cuda:{last}"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_worker_alone_on_its_gpu_sees_only_that_gpu_as_cuda_0():
    last = torch.cuda.device_count() - 1
    physical = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(last + 1))))
    events = []
    manager = BatchQueueManager(
        support.gpu_identity_worker, [last], {}, visible_devices=[physical.split(",")[last]]
    )
    results = manager.run(_square_units(1), on_event=events.append)
    assert [r["device"] for r in results.values()] == ["cuda:0"]
    assert [r["visible"] for r in results.values()] == [1]
    assert [r["uuid"] for r in results.values()] == [
        str(torch.cuda.get_device_properties(last).uuid)
    ]
    assert [e.worker.device for e in events if e.kind == "ready"] == [
        f"cuda:0 (CUDA_VISIBLE_DEVICES={physical.split(',')[last]})"
    ]


def test_visible_devices_need_one_entry_per_device():
    with pytest.raises(ValueError, match="one CUDA_VISIBLE_DEVICES entry per device"):
        BatchQueueManager(support.square_worker, ["cpu", "cpu"], visible_devices=["0"])


queue_support = importlib.import_module("queue_support")


def _gone(pid):
    """Exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_stopped_worker_is_killed_its_unit_requeued_and_the_event_said(tmp_path):
    events = []
    kwargs = {"stop_once": str(tmp_path / "stopped"), "stop_on": 7}
    manager = BatchQueueManager(
        queue_support.stalling_worker,
        ["cpu"],
        kwargs,
        stall_timeout_s=1.5,
        startup_timeout_s=120,
    )
    results = manager.run(_square_units(6), on_event=events.append)
    for unit_id, result in results.items():
        assert result["squares"] == [x * x for x in range(unit_id * 3, unit_id * 3 + 3)]
    (stalled,) = [e for e in events if e.kind == "stalled"]
    worker_id, pid = stalled.worker.worker_id, stalled.worker.pid
    assert stalled.unit_id == 2 and stalled.seconds >= 1.5
    assert stalled.detail.startswith(f"worker {worker_id} (cpu, pid {pid}) made no progress for")
    assert re.search(r"in unit 2 \(limit \d+ s\): killed, unit re-queued$", stalled.detail)
    (failed,) = [e for e in events if e.kind == "unit_failed"]
    assert (failed.unit_id, failed.worker.worker_id) == (2, worker_id)
    assert failed.detail.startswith("stalled: no progress for")
    assert _gone(pid) and results[2]["pid"] != pid
    # Handed out again, the unit says so: its handler may find rows the dead one wrote.
    assert [results[u]["attempt"] for u in range(6)] == [0, 0, 1, 0, 0, 0]
    assert manager.worker_states()[worker_id].respawns == 1
    assert sum(s.sequences_done for s in manager.worker_states().values()) == 18


def test_a_unit_that_hangs_every_time_stops_the_run_naming_it():
    manager = BatchQueueManager(
        queue_support.stalling_worker,
        ["cpu"],
        {"hang_on": 4},
        max_failures=1,
        stall_timeout_s=1.0,
        startup_timeout_s=120,
    )
    with pytest.raises(QueueRunError, match=r"unit 1 \(items 3\.\.\) failed 1 times") as stop:
        manager.run(_square_units(2))
    assert "stalled: no progress for" in str(stop.value)


def test_the_stall_limit_grows_with_the_slowest_gap_seen():
    """Gaps of 0.5 s then 3 s: the second exceeds the 1.5 s timeout but not 10 x 0.5 s."""
    events = []
    manager = BatchQueueManager(
        queue_support.stalling_worker,
        ["cpu"],
        {"gaps_s": (0.5, 3.0)},
        stall_timeout_s=1.5,
        stall_scale=10.0,
        startup_timeout_s=120,
    )
    results = manager.run(_square_units(1), on_event=events.append)
    assert results[0]["squares"] == [0, 1, 4]
    assert [e for e in events if e.kind in ("stalled", "unit_failed")] == []
    assert manager.stall_limit_s >= 10 * 2.0  # the 3 s gap, less pipe latency
    with pytest.raises(ValueError, match="stall scale >= 1"):
        BatchQueueManager(queue_support.stalling_worker, ["cpu"], stall_scale=0.5)


ORPHAN_PARENT = """
import sys
sys.path.insert(0, {support_dir!r})
import queue_support
from virnucpro.infer.queue_manager import BatchQueueManager, WorkUnit

def said(event):
    if event.kind == "ready":
        print("child", event.worker.pid, flush=True)

if __name__ == "__main__":
    units = [WorkUnit(u, [5], 1) for u in range(2)]
    BatchQueueManager(queue_support.stalling_worker, ["cpu", "cpu"], {{"hang_on": 5}}).run(
        units, on_event=said
    )
"""


def test_workers_die_when_the_manager_process_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_PARENT.format(support_dir=str(Path(__file__).parent)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    children = []
    try:
        while len(children) < 2:
            line = parent.stdout.readline()
            assert line, parent.stderr.read()[-2000:]
            children.append(int(line.split()[1]))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_gone(p) for p in children):
            time.sleep(0.05)
        assert all(_gone(p) for p in children)
    finally:
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
