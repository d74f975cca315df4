"""Child processes die with their parent, whatever kills it (lesson 16).

A DataLoader or queue worker whose parent was SIGKILLed stays blocked on a pipe for
good, holding hundreds of MB. On Linux the kernel sends the child a signal when its
parent exits (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or if prctl is unavailable, a
daemon thread polls ``os.getppid()``. Either way the child then checks that its parent
is still the process that started it: a parent that died before the request took
effect is caught too (the getppid race).

PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so start
children from a thread that lives as long as they should (the main thread).

Standard library only, so the data, infer and cli packages can all use it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
DEFAULT_POLL_S = 1.0

MECHANISM_PRCTL = "prctl"
MECHANISM_WATCHDOG = "watchdog"


def die_with_parent(
    parent_pid: int | None = None,
    use_prctl: bool = True,
    poll_interval_s: float = DEFAULT_POLL_S,
) -> str:
    """Make this process die (SIGKILL) when its parent does; return the mechanism used.

    ``parent_pid``: the parent expected; by default the one multiprocessing recorded
    when it started this process (exact even if the parent already died), else the
    current parent. ``use_prctl=False`` forces the polling watchdog (``"watchdog"``).
    """
    expected = parent_pid if parent_pid is not None else expected_parent_pid()
    mechanism = MECHANISM_WATCHDOG
    if use_prctl and _set_parent_death_signal(signal.SIGKILL):
        mechanism = MECHANISM_PRCTL
    if os.getppid() != expected:
        _die()
    if mechanism == MECHANISM_WATCHDOG:
        threading.Thread(
            target=_watch, args=(expected, poll_interval_s), name="parent-watchdog", daemon=True
        ).start()
    return mechanism


def expected_parent_pid() -> int:
    """The pid of the process that started this one (multiprocessing's record if any)."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        return parent.pid
    return os.getppid()


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(expected: int, interval: float) -> None:
    while os.getppid() == expected:
        time.sleep(interval)
    _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
