"""Processes that tests, the demo and benchmarks start: they die with their parent, and
they are stopped by PID, never by name; what they leave behind is found and killed only if
its PID still names the same process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["STOP_GRACE", "descendants", "die_with_parent", "kill_if_unchanged", "stop_processes"]

STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """For `preexec_fn`: the kernel sends `sig` to the child when the thread that forked it
    exits, so a crashed test or benchmark leaves no server behind. Start long-lived children
    from a thread that lives as long as they should (the main thread)."""
    _prctl(_PR_SET_PDEATHSIG, sig)


_PR_SET_PDEATHSIG = 1
# Resolved here, not in the forked child, where loading a library could wait forever on a
# lock another thread of the parent held at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid` and below them: what a stopped
    process may leave running (kube-proxy's iptables-restore can outlive it for minutes)."""
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with (
                    contextlib.suppress(OSError),
                    open(f"/proc/{parent}/task/{task}/children") as f,
                ):
                    for child in map(int, f.read().split()):
                        started = _start_time(child)
                        if started is not None:
                            out.append((child, started))
                            todo.append(child)
    return out


def kill_if_unchanged(found: Iterable[tuple[int, str]]) -> None:
    """SIGKILL each process `descendants` found, by PID, unless that PID now belongs to
    another process (its start time differs) or is gone."""
    for pid, started in found:
        if _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


# -- process-wide cleanup on exit and signals ---------------------------------------------


def stop_processes(procs: Iterable[subprocess.Popen[Any]], grace: float = STOP_GRACE) -> None:
    """SIGTERM each (by its PID), wait up to `grace` seconds in all, SIGKILL the rest, reap
    all."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in running:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=10)
