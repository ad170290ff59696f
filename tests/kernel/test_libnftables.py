"""The libnftables backend (nftproxy.kernel.libnftables), in namespaces these tests create:
nft text in-process, element-only transactions as netlink batches, listings, and each
backend in its own namespace."""

from __future__ import annotations

import pytest

from nftproxy.kernel.errors import NftError
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.ruleset.schema import PORT_FIELD, VERDICT_DATA, Chain, SetDef, goto
from nftproxy.ruleset.transaction import AddChain, AddElements, Transaction
from tests.support.kernel import nft_in

pytestmark = pytest.mark.kernel

TABLE = """add table inet nftproxy
add chain inet nftproxy c
add set inet nftproxy ports { type inet_service; }
add map inet nftproxy verdicts { type inet_service : verdict; }
add element inet nftproxy ports { 80, 443 }
"""
SETS = {
    s.name: s
    for s in (SetDef("ports", (PORT_FIELD,)), SetDef("verdicts", (PORT_FIELD,), VERDICT_DATA))
}


def set_elements(doc: dict, kind: str = "set") -> list:
    return [item[kind].get("elem", []) for item in doc["nftables"] if kind in item]


def test_it_runs_checks_and_lists_in_its_namespace(netns):
    lib = LibNftables(netns)
    try:
        assert lib.list_table() is None
        lib.check(TABLE)  # a dry run: nothing committed
        assert lib.list_table() is None
        before = lib.generation()
        lib.run(TABLE)
        assert lib.generation() == before + 1  # one script, one transaction
        assert set_elements(lib.list_table()) == [[80, 443]]
        assert set_elements(lib.list_set("ports", is_map=False)) == [[80, 443]]
        assert lib.list_set("nope", is_map=False) is None
        assert "elements = { 80, 443 }" in nft_in(netns, "list", "set", "inet", "nftproxy", "ports")
        with pytest.raises(NftError) as info:
            lib.run("delete set inet nftproxy nope")
        assert info.value.kind == "not-found"
        with pytest.raises(NftError) as info:
            lib.check("add rule inet nftproxy c jump nowhere")
        assert "nowhere" in str(info.value)
    finally:
        lib.close()


def test_element_only_transactions_go_as_batches_the_rest_as_text(netns):
    lib = LibNftables(netns)
    try:
        lib.run(TABLE)
        elements = Transaction([AddElements("verdicts", (((80,), goto("c")),))])
        assert lib.batches(elements, SETS)
        generation = lib.generation()
        assert lib.apply(elements, SETS, generation=generation) is True
        assert lib.generation() == generation + 1
        assert set_elements(lib.list_table(), "map") == [[[80, {"goto": {"target": "c"}}]]]
        assert len(lib.set_elements("verdicts") or []) == 1
        with_chain = Transaction([AddChain(Chain("d")), AddElements("ports", (((8,), None),))])
        assert not lib.batches(with_chain, SETS)
        assert lib.apply(with_chain, SETS) is False
        objects = lib.objects()
        assert objects is not None and set(objects.chains) == {"c", "d"}
        assert objects.maps == {"verdicts"}
    finally:
        lib.close()


def test_each_backend_works_in_its_own_namespace(make_netns):
    a, b = make_netns(), make_netns()
    lib_a, lib_b = LibNftables(a), LibNftables(b)
    try:
        lib_a.run(TABLE)
        assert lib_a.list_table() is not None
        assert lib_b.list_table() is None
        assert nft_in(b, "list", "ruleset") == ""
    finally:
        lib_a.close()
        lib_b.close()
