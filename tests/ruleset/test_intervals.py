"""Interval sets (CIDRs: node-port addresses, cluster CIDRs, load-balancer source ranges) in
the one form the kernel stores and nft 1.0.6 lists, on both sides of a diff; and changes
to overlapping intervals as one transaction. The forms (test_schema.py lists them) were
read from the kernel (tests/test_applying.py checks them there)."""

from __future__ import annotations

import pytest

from nftproxy.config import NodeConfig
from nftproxy.ruleset.diff import AppliedState, diff
from nftproxy.ruleset.listing import applied_from_json
from nftproxy.ruleset.schema import interval_atoms
from nftproxy.ruleset.transaction import AddElements, DeleteElements, Transaction
from tests.support.builders import OUTSIDE, build, endpoints, ep, port, reached, send, service

LB = "198.51.100.10"


def _listing(name: str, elems: list) -> dict:
    return {
        "nftables": [
            {"set": {"family": "inet", "name": name, "table": "nftproxy", "elem": elems}},
        ]
    }


def test_every_form_nft_lists_reads_back_as_the_desired_side_writes_it():
    prefix = {"prefix": {"addr": "203.0.113.0", "len": 24}}
    listed = [
        "192.168.0.2",
        {"prefix": {"addr": "10.0.0.0", "len": 23}},
        {"prefix": {"addr": "0.0.0.0", "len": 0}},
        {"prefix": {"addr": "::ffff:0.0.0.0", "len": 96}},
        # Not what nft 1.0.6 prints, but the same interval: read as the bare address.
        {"prefix": {"addr": "192.0.2.9", "len": 32}},
        {"concat": [LB, "tcp", 80, prefix]},
        {"concat": [LB, "tcp", 80, "203.0.114.7"]},
    ]
    got = applied_from_json(_listing("s", listed)).elements["s"]
    assert set(got) == {
        ("192.168.0.2",),
        ("10.0.0.0/23",),
        ("0.0.0.0/0",),
        ("::ffff:0.0.0.0/96",),
        ("192.0.2.9",),
        (LB, "tcp", 80, "203.0.113.0/24"),
        (LB, "tcp", 80, "203.0.114.7"),
    }
    written = interval_atoms(["192.168.0.2/32", "10.0.0.0/23", "0.0.0.0/0", "::ffff:0:0/96"])
    assert {(a,) for a in written} <= set(got)


def nodeport_node(*cidrs: str) -> NodeConfig:
    return NodeConfig(node_name="node-a", node_ips=("192.168.0.2",), nodeport_addresses=cidrs)


def cluster_node(*cidrs: str) -> NodeConfig:
    return NodeConfig(node_name="node-a", node_ips=("192.168.0.2",), cluster_cidrs=cidrs)


def lb_service(*ranges: str, name: str = "web"):
    return service(
        name,
        ports=[port(80, node_port=30080)],
        load_balancer_ips=(LB,),
        load_balancer_source_ranges=ranges,
    )


WEB_SLICE = endpoints("web", [ep("10.244.1.1")])


def test_a_host_prefix_is_written_as_the_kernel_lists_it():
    rs = build([lb_service("203.0.113.7/32")], [WEB_SLICE], node=cluster_node("192.168.0.2/32"))
    assert set(rs.elements["g1-cluster-cidrs4"]) == {("192.168.0.2",)}
    assert set(rs.elements["g1-firewall-allow4"]) == {(LB, "tcp", 80, "203.0.113.7")}


def test_a_services_nested_and_adjacent_source_ranges_are_one_interval_each():
    svc = lb_service("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/25", "192.0.2.128/25", "::/0")
    rs = build([svc], [WEB_SLICE])
    assert set(rs.elements["g1-firewall-allow4"]) == {
        (LB, "tcp", 80, "10.0.0.0/8"),
        (LB, "tcp", 80, "192.0.2.0/24"),
    }


def the_plan(before, after) -> list[Transaction]:
    return diff(after, AppliedState.of(before)).split()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (("192.168.0.2/32",), ("192.168.0.0/23",)),
        (("192.168.0.0/23",), ("192.168.0.2/32",)),
        (("192.168.0.0/24", "192.168.2.0/24"), ("192.168.0.0/22",)),
        (("192.168.0.2/32",), ("0.0.0.0/0",)),
    ],
)
def test_a_node_cidr_replaced_by_an_overlapping_one_is_swapped_in_one_transaction(old, new):
    before = build([lb_service()], [WEB_SLICE], node=cluster_node(*old))
    after = build([lb_service()], [WEB_SLICE], node=cluster_node(*new))
    (tx,) = the_plan(before, after)
    assert [type(op) for op in tx.ops] == [DeleteElements, AddElements]
    assert str(tx).index("delete element") < str(tx).index("add element")


def test_two_adjacent_cidrs_and_the_prefix_they_make_are_the_same_table():
    before = build([], [], node=cluster_node("192.168.0.0/24", "192.168.1.0/24"))
    after = build([], [], node=cluster_node("192.168.0.0/23"))
    assert the_plan(before, after) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (("10.0.0.0/8",), ("10.0.0.0/16",)),
        (("10.0.0.0/16",), ("10.0.0.0/8",)),
        (("203.0.113.7/32",), ("203.0.113.0/24", "192.0.2.1/32")),
        (("203.0.113.0/24", "192.0.2.1/32"), ("203.0.113.7/32",)),
    ],
)
def test_changed_source_ranges_are_swapped_in_one_transaction(old, new):
    before = build([lb_service(*old)], [WEB_SLICE])
    after = build([lb_service(*new)], [WEB_SLICE])
    (tx,) = the_plan(before, after)
    assert [(type(op), op.set) for op in tx.ops] == [
        (DeleteElements, "g1-firewall-allow4"),
        (AddElements, "g1-firewall-allow4"),
    ]


def test_a_frontend_losing_its_firewall_keeps_its_ranges_until_the_firewall_goes():
    before = build([lb_service("10.0.0.0/8")], [WEB_SLICE])
    # Another Service gains ranges in the same change: its additions must not pull the
    # deletion forward, or packets to web would find its firewall without ranges.
    other = service(
        "api",
        cluster_ips=("10.96.0.11",),
        load_balancer_ips=("198.51.100.11",),
        load_balancer_source_ranges=("10.0.0.0/16",),
    )
    api_slice = endpoints("api", [ep("10.244.1.2")])
    after = build([lb_service(), other], [WEB_SLICE, api_slice])
    *_, last = the_plan(before, after)
    assert "delete element inet nftproxy g1-firewall4 { 198.51.100.10 . tcp . 80 }" in str(last)
    assert (
        "delete element inet nftproxy g1-firewall-allow4 { 198.51.100.10 . tcp . 80 . 10.0.0.0/8 }"
        in str(last)
    )


def test_deletions_of_plain_sets_and_maps_still_come_last():
    before = build([lb_service("10.0.0.0/8")], [endpoints("web", [ep("10.244.1.1")])])
    after = build([lb_service("10.0.0.0/16")], [endpoints("web", [ep("10.244.1.2")])])
    *first, last = the_plan(before, after)
    assert "g1-hairpin4 { 10.244.1.1 . 10.244.1.1 }" in str(last)
    assert "10.244.1.1" not in "".join(map(str, first))
    assert "delete element inet nftproxy g1-firewall-allow4" in "".join(map(str, first))


@pytest.mark.parametrize(
    ("ranges", "source", "admitted"),
    [
        (("203.0.113.7/32",), "203.0.113.7", True),
        (("203.0.113.7/32",), "203.0.113.8", False),
        (("0.0.0.0/0",), "192.0.2.1", True),
        (("10.0.0.0/8", "10.1.0.0/16"), "10.200.0.1", True),
        (("2001:db8::7/128",), "2001:db8::7", True),
        (("2001:db8::7/128",), "2001:db8:0::8", False),
        (("2001:db8::7/128",), "2001:db8:0:0::7", True),  # another spelling, same address
        (("::/0",), "2001:db8::9", True),
    ],
)
def test_explain_reads_interval_elements_in_the_kernels_form(ranges, source, admitted):
    v6 = ":" in source
    lb = "2001:db8:1::10" if v6 else LB
    svc = service(
        cluster_ips=("fd00:96::10",) if v6 else ("10.96.0.10",),
        load_balancer_ips=(lb,),
        load_balancer_source_ranges=ranges,
    )
    rs = build(
        [svc],
        [endpoints("web", [ep("fd00:244::1" if v6 else "10.244.1.1")], family=6 if v6 else 4)],
    )
    result = send(rs, lb, src=source)
    if admitted:
        assert len(reached(result)) == 1
    else:
        assert result.outcomes() == {"drop": 1}


def test_explain_finds_a_node_port_on_a_host_prefix():
    node = nodeport_node("192.168.0.2/32")
    rs = build([lb_service()], [WEB_SLICE], node=node)
    assert reached(send(rs, "192.168.0.2", 30080, src=OUTSIDE, node=node)) == {"10.244.1.1:8080": 1}
