"""Network namespaces (nftproxy.kernel.netns): a namespace's file, a short-lived thread that
makes something inside one, and a worker thread that stays there; the caller's own
namespace never changes."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from nftproxy.kernel.netns import netns_path, run_in_netns, thread_in


def here() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def inode(netns: str) -> int:
    return os.stat(netns_path(netns)).st_ino


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ("nftp-x", "/run/netns/nftp-x"),
        ("/proc/1/ns/net", "/proc/1/ns/net"),
        (Path("/run/netns/nftp-y"), "/run/netns/nftp-y"),
    ],
)
def test_a_namespace_is_named_or_given_by_path(given, path):
    assert netns_path(given) == path


@pytest.mark.kernel
def test_run_in_netns_makes_things_inside_and_leaves_the_caller_where_it_was(netns):
    mine = here()
    assert run_in_netns(netns, here) == inode(netns) != mine
    assert here() == mine
    assert run_in_netns(None, lambda: threading.current_thread()) is threading.current_thread()


@pytest.mark.kernel
def test_a_socket_made_inside_stays_there_whoever_uses_it(netns):
    server = run_in_netns(netns, lambda: socket.create_server(("127.0.0.1", 0)))
    with server:
        port = server.getsockname()[1]
        client = run_in_netns(netns, lambda: socket.create_connection(("127.0.0.1", port), 5))
        with client:
            conn, _ = server.accept()  # accepted by this thread, in its own namespace
            with conn:
                conn.sendall(b"hi")
                assert client.recv(2) == b"hi"


@pytest.mark.kernel
def test_errors_inside_reach_the_caller(netns):
    def fail() -> None:
        raise LookupError("inside")

    with pytest.raises(LookupError, match="inside"):
        run_in_netns(netns, fail)
    with pytest.raises(FileNotFoundError):
        run_in_netns(f"nftp-missing-{uuid.uuid4().hex[:8]}", here)


@pytest.mark.kernel
def test_thread_in_runs_every_call_inside(netns):
    pool = thread_in(netns, "t")
    try:
        assert {pool.submit(here).result() for _ in range(3)} == {inode(netns)}
    finally:
        pool.shutdown()
    with pytest.raises(FileNotFoundError):
        thread_in(f"nftp-missing-{uuid.uuid4().hex[:8]}", "t")
