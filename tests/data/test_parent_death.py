"""Children die with their parent: real processes, a real SIGKILL of the parent.

Each scenario runs a parent script in its own session that starts children which hang
(a DataLoader worker stuck in ``__getitem__``, a plain spawned process sleeping), prints
their pids, then is SIGKILLed. Without the parent-death guard those children live on.
The children say their pid in one write each: two ``print`` calls running at once
interleave their pieces on the shared pipe ("childchild  1053510536"), and the test then
waited for a line that never came.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

GONE_WITHIN_S = 10.0


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pids, limit=GONE_WITHIN_S):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _kill_parent_and_collect(script: str, tmp_path, expected_children: int):
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    parent = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        text=True,
    )
    children = []
    try:
        while len(children) < expected_children:
            line = parent.stdout.readline()
            assert line, f"parent ended early: {parent.stderr.read()[-2000:]}"
            if line.startswith("child "):
                children.append(int(line.split()[1]))
        assert all(_alive(p) for p in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        survivors = _wait_gone(children)
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
    return survivors


LOADER_PARENT = """
import os, time
from torch.utils.data import Dataset
from virnucpro.data import create_async_dataloader

class Hangs(Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        os.write(1, f"child {os.getpid()}\\n".encode())  # one write: lines never interleave
        time.sleep(3600)

if __name__ == "__main__":
    loader = create_async_dataloader(Hangs(), batch_size=None, num_workers=2, prefetch_factor=1)
    next(iter(loader))
"""


def test_dataloader_workers_die_when_the_parent_is_killed(tmp_path):
    assert _kill_parent_and_collect(LOADER_PARENT, tmp_path, 2) == []


SPAWN_PARENT = """
import multiprocessing, os, time
from virnucpro.data.parent_death import die_with_parent

def child(use_prctl):
    mechanism = die_with_parent(use_prctl=use_prctl, poll_interval_s=0.1)
    os.write(1, f"child {os.getpid()} {mechanism}\\n".encode())  # one write: no interleaving
    time.sleep(3600)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    for use_prctl in (True, False):
        ctx.Process(target=child, args=(use_prctl,)).start()
    time.sleep(3600)
"""


def test_both_mechanisms_kill_a_spawned_child(tmp_path):
    assert _kill_parent_and_collect(SPAWN_PARENT, tmp_path, 2) == []


def test_a_parent_already_gone_is_noticed_at_once():
    """The getppid race: the parent died before the guard was set (we pass another pid)."""
    code = (
        "from virnucpro.data.parent_death import die_with_parent\n"
        "import os\n"
        "die_with_parent(parent_pid=os.getppid() + 12345)\n"
        "print('survived')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout


def test_the_mechanism_is_said():
    code = (
        "from virnucpro.data.parent_death import die_with_parent\n"
        "print(die_with_parent(), die_with_parent(use_prctl=False))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    expected = "prctl" if sys.platform.startswith("linux") else "watchdog"
    assert done.stdout.split() == [expected, "watchdog"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_alive_sees_a_zombie_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and _alive(child.pid):
        time.sleep(0.01)
    assert not _alive(child.pid)  # exited, not yet reaped: a zombie
    child.wait()
