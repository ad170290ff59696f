"""Fixtures of the element-writer tests: fresh namespaces (nftp-nl-*), two holding the
same empty table, and a writer into the first."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from nftproxy.kernel.netlink import ElementWriter
from tests.support.elements import skeleton_text
from tests.support.kernel import nft_in, require_root

nft = nft_in


@pytest.fixture
def make_ns(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Fresh namespaces named nftp-nl-*, each deleted by a finalizer registered as soon as
    it exists (so a failing test or fixture still removes it)."""
    require_root()

    def make() -> str:
        name = f"nftp-nl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        request.addfinalizer(
            lambda: subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        )
        return name

    return make


@pytest.fixture
def twins(make_ns: Callable[[], str]) -> tuple[str, str]:
    """Two namespaces holding the same empty table: one for the writer, one for nft."""
    a, b = make_ns(), make_ns()
    for ns in (a, b):
        nft(ns, "-f", "-", stdin=skeleton_text())
    return a, b


@pytest.fixture
def writer(twins: tuple[str, str]) -> Iterator[ElementWriter]:
    w = ElementWriter(twins[0])
    yield w
    w.close()
