"""Endpoint selection for one Service port (pure logic, no kernel)."""

from __future__ import annotations

from nftproxy.selection import select
from tests.support.builders import NODE, endpoints, ep, port

HTTP = port(80)


def test_an_address_in_two_slices_is_chosen_the_same_whatever_order_they_come_in():
    me = NODE.node_name
    assert me
    here = endpoints("web", [ep("10.244.1.1", me)], slice_name="web-a")
    there = endpoints(
        "web", [ep("10.244.1.1", "node-b"), ep("10.244.2.2", "node-b")], slice_name="web-b"
    )
    first = select(HTTP, [here, there], 4, NODE)
    assert select(HTTP, [there, here], 4, NODE) == first
    # web-a sorts first, so its copy (on this node) is the one that counts.
    assert [b.ip for b in first.local] == ["10.244.1.1"]
    assert first.maybe_here == ("10.244.1.1",)
    assert [b.ip for b in first.cluster] == ["10.244.1.1", "10.244.2.2"]


def test_a_ready_copy_of_an_address_beats_a_not_ready_one_in_any_slice():
    ready = endpoints("web", [ep("10.244.1.1", "node-b")], slice_name="web-z")
    not_ready = endpoints("web", [ep("10.244.1.1", "node-b", ready=False)], slice_name="web-a")
    for order in ([ready, not_ready], [not_ready, ready]):
        chosen = select(HTTP, order, 4, NODE)
        assert [b.ip for b in chosen.cluster] == ["10.244.1.1"] and chosen.any_usable
