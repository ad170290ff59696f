"""Network namespaces: where a namespace's file is, entering one in a thread, running a
function there. The only copy: the backends, conntrack, the interface watcher and the lab
all use it. setns(CLONE_NEWNET) is per thread, so the rest of the process stays put."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nftproxy.kernel.errors import NEEDS_SYS_ADMIN

__all__ = ["CLONE_NEWNET", "netns_path", "run_in_netns", "setns", "thread_in"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def netns_path(netns: str | Path) -> str:
    """The file of a namespace given by name (`ip netns` style) or by path."""
    text = str(netns)
    return text if text.startswith("/") else f"/run/netns/{text}"


def run_in_netns(netns: str | Path | None, make: Callable[[], T]) -> T:
    """`make()` run by a short-lived thread that entered `netns` (None: this one), so that
    what it creates, a listening socket say, belongs to that namespace for good, whatever
    thread uses it later. The calling thread's namespace is never changed."""
    if netns is None:
        return make()
    box: list[Any] = []

    def run() -> None:
        try:
            setns(netns)
            box.append((True, make()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name=f"in-{Path(str(netns)).name}")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def setns(netns: str | Path | None) -> None:
    """Move the calling thread into `netns` (None: stay)."""
    if netns is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise PermissionError(f"{NEEDS_SYS_ADMIN} {netns}: {os.strerror(err)}")
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def thread_in(netns: str | None, name: str) -> ThreadPoolExecutor:
    """One worker thread inside `netns`, every call after the first running in it.

    Entered by a first task rather than an initializer: a failing initializer only breaks
    the pool, with a traceback on stderr, and loses the reason (no privilege, say)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        pool.submit(setns, netns).result()
    except BaseException:
        pool.shutdown(wait=False)
        raise
    return pool
