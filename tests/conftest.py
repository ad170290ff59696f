"""Shared fixtures: throwaway network namespaces for real-kernel tests, and daemons."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.kernel import ip, require_kernel


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Factory of fresh namespaces, deleted when the test ends whatever happens."""
    require_kernel()
    created: list[str] = []

    def make() -> str:
        name = f"nftp-t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        ip("netns", "add", name)
        created.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Daemon]]:
    """Starts `nftproxy run` with the given arguments; every one is ended with the test."""
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        log = tmp_path_factory.mktemp("daemon") / "log"
        started.append(Daemon(args, log))
        return started[-1]

    yield start
    for daemon in started:
        daemon.kill()
