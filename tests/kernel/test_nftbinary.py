"""The nft binary backend (nftproxy.kernel.nftbinary), in namespaces these tests create."""

from __future__ import annotations

import json

import pytest

from nftproxy import applying
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.nftbinary import NftBinary
from tests.support.kernel import nft_in
from tests.support.tables import builder, cluster

pytestmark = pytest.mark.kernel


def test_the_nft_binary_backend_gives_the_same_table_as_libnftables(netns, make_netns):
    svcs, slices = cluster(affinity=True)
    lib = open_backend(netns, prefer="lib")
    applying.run_plan(lib, applying.make_plan(builder(svcs, slices), None))
    other = make_netns()
    binary = NftBinary(other)
    applying.run_plan(binary, applying.make_plan(builder(svcs, slices), None))
    assert applying.read_applied(lib) == applying.read_applied(binary)
    doc = json.loads(nft_in(other, "-j", "list", "table", "inet", "nftproxy"))
    assert any("map" in item for item in doc["nftables"])
