"""The nft binary backend (nftproxy.kernel.nftbinary), in namespaces these tests create: it
runs, checks and lists with the nft command, and what needs netlink is Unsupported."""

from __future__ import annotations

import json

import pytest

from nftproxy import applying
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NftError, Unsupported
from nftproxy.kernel.nftbinary import NftBinary
from nftproxy.ruleset.schema import PORT_FIELD, SetDef
from nftproxy.ruleset.transaction import AddElements, Transaction
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


TABLE = """add table inet nftproxy
add set inet nftproxy ports { type inet_service; }
add element inet nftproxy ports { 80, 443 }
"""


def set_elements(doc: dict) -> list:
    return [item["set"].get("elem", []) for item in doc["nftables"] if "set" in item]


def test_it_runs_checks_and_lists_in_its_namespace(netns):
    binary = NftBinary(netns)
    try:
        assert binary.list_table() is None
        binary.check(TABLE)  # nft -c: nothing committed
        assert binary.list_table() is None
        before = binary.generation()
        binary.run(TABLE)
        assert binary.generation() > before
        assert set_elements(binary.list_table()) == [[80, 443]]
        assert set_elements(binary.list_set("ports", is_map=False)) == [[80, 443]]
        assert binary.list_set("nope", is_map=False) is None
        # What it did is in the namespace, as nft itself lists it there.
        assert "elements = { 80, 443 }" in nft_in(netns, "list", "set", "inet", "nftproxy", "ports")
        with pytest.raises(NftError) as info:
            binary.run("delete set inet nftproxy nope")
        assert info.value.kind == "not-found"
    finally:
        binary.close()


def test_it_applies_every_transaction_as_text_and_checks_no_generation(netns):
    binary = NftBinary(netns)
    try:
        binary.run(TABLE)
        sets = {"ports": SetDef("ports", (PORT_FIELD,))}
        tx = Transaction([AddElements("ports", (((8080,), None),))])
        assert binary.batches(tx, sets) is False
        assert binary.apply(tx, sets, generation=binary.generation() - 1) is False
        assert set_elements(binary.list_table()) == [[80, 443, 8080]]
    finally:
        binary.close()


def test_what_needs_netlink_is_unsupported(netns):
    binary = NftBinary(netns)
    try:
        binary.run(TABLE)
        for call in (
            binary.objects,
            lambda: binary.set_elements("ports"),
            lambda: binary.dump_sets(["ports"]),
            binary.monitor,
        ):
            with pytest.raises(Unsupported) as info:
                call()
            assert info.value.kind == "unsupported" and "nft binary" in str(info.value)
        binary.forget_caches()  # nothing kept: nothing to forget
    finally:
        binary.close()
