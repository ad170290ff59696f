"""The lab's pure parts: topology values, target parsing, result JSON (no root needed)."""

from __future__ import annotations

from collections import Counter

import pytest

from nftproxy.lab import (
    External,
    Node,
    Pod,
    Result,
    Topology,
    TopologyError,
    default_topology,
)
from nftproxy.lab.client import format_target, parse_target
from nftproxy.lab.echo import peer_ip
from nftproxy.lab.netns import pod_veth, uplink_peer


def test_default_topology_addresses() -> None:
    topo = default_topology(nodes=2, pods_per_node=2)
    n1, n2 = topo.nodes
    assert (n1.name, n1.ip4, n1.ip6, n1.pod_cidr4, n1.pod_cidr6) == (
        "node-1",
        "192.168.77.11",
        "fd00:77::11",
        "10.244.1.0/24",
        "fd00:244:1::/64",
    )
    assert (n2.ip4, n2.pod_cidr4) == ("192.168.77.12", "10.244.2.0/24")
    assert [(p.name, p.node, p.ip4, p.ip6) for p in topo.pods] == [
        ("pod-1", "node-1", "10.244.1.10", "fd00:244:1::10"),
        ("pod-2", "node-1", "10.244.1.11", "fd00:244:1::11"),
        ("pod-3", "node-2", "10.244.2.10", "fd00:244:2::10"),
        ("pod-4", "node-2", "10.244.2.11", "fd00:244:2::11"),
    ]
    assert (topo.ext.ip4, topo.ext.ip6) == ("192.168.77.100", "fd00:77::100")
    assert topo.pods_on("node-2") == topo.pods[2:]
    assert topo.pod_by_ip("FD00:244:2::0010").name == "pod-3"


def test_pods_are_added_and_removed_as_new_values() -> None:
    topo = default_topology(2, 1, ipv6=False)
    assert all(p.ip6 is None for p in topo.pods)
    pod = topo.new_pod("node-1")
    assert pod == Pod("pod-3", "node-1", "10.244.1.11", "fd00:244:1::11")
    bigger = topo.with_pod(pod)
    assert len(topo.pods) == 2 and len(bigger.pods) == 3
    smaller = bigger.without_pod("pod-1")
    assert smaller.new_pod("node-1", "web") == Pod("web", "node-1", "10.244.1.10", "fd00:244:1::10")
    with pytest.raises(TopologyError, match="used twice"):
        bigger.with_pod(pod)
    with pytest.raises(KeyError):
        topo.new_pod("node-9")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.with_pod(Pod("x", "node-1", "10.244.2.50")), "not a host"),
        (lambda t: t.with_pod(Pod("y", "node-1", "10.244.1.10")), "both have address"),
        (lambda t: t.with_pod(Pod("z", "node-7", "10.244.1.99")), "unknown node"),
        (lambda t: t.with_pod(Pod("node-1", "node-1", "10.244.1.99")), "used twice"),
    ],
)
def test_bad_changes_are_refused(change: object, message: str) -> None:
    topo = default_topology(1, 1)
    with pytest.raises(TopologyError, match=message):
        change(topo)  # type: ignore[operator]


def test_bad_names_and_nodes_are_refused() -> None:
    with pytest.raises(TopologyError, match="reserved"):
        Pod("net", "node-1", "10.244.1.10")
    with pytest.raises(TopologyError, match="must be"):
        Pod("Bad_Name", "node-1", "10.244.1.10")
    with pytest.raises(TopologyError, match="at least one node"):
        Topology(nodes=())
    with pytest.raises(TopologyError, match="overlap"):
        n2 = Node("n2", 2, "192.168.77.12", "fd00:77::12", "10.244.1.0/25", "fd00:244:2::/64")
        Topology(nodes=(Node.numbered(1), n2))
    with pytest.raises(TopologyError, match="outside"):
        Topology(nodes=(Node("n", 1, "10.0.0.1", "fd00:77::1", "10.244.1.0/24", "fd00:1::/64"),))


def test_interface_names_fit_fifteen_bytes() -> None:
    assert pod_veth("pod-1") == "v-pod-1"
    long = pod_veth("a-very-long-pod-name-indeed")
    assert len(long) <= 15 and long != pod_veth("a-very-long-pod-name-indeed2")
    assert uplink_peer("node-1") == "up-node-1"
    assert len(uplink_peer("node-with-a-long-name")) <= 15


def test_targets_parse_and_format() -> None:
    assert parse_target("10.96.0.10:80") == ("10.96.0.10", 80)
    assert parse_target("[fd00:96::0a]:53") == ("fd00:96::a", 53)
    assert format_target("fd00:96::a", 53) == "[fd00:96::a]:53"
    for bad in ("10.96.0.10", "fd00::1:80", "[fd00::1]80", "host:80", "10.0.0.1:0", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_echo_reports_mapped_addresses_as_ipv4() -> None:
    assert peer_ip(("::ffff:10.244.1.10", 5000, 0, 0)) == "10.244.1.10"
    assert peer_ip(("fe80::1%eth0", 5000, 0, 2)) == "fe80::1"
    assert peer_ip(("10.0.0.1", 1)) == "10.0.0.1"


def test_result_round_trips_through_json() -> None:
    result = Result(
        replies=Counter({"pod-1 10.244.1.10": 3, "pod-3 192.168.77.11": 1}),
        refused=1,
        timeouts=2,
        other=1,
        errors=Counter({"ECONNREFUSED": 1, "ENETUNREACH": 1}),
        elapsed=0.5,
    )
    data = result.to_json()
    assert data["failures"] == {"refused": 1, "timeout": 2, "other": 1}
    again = Result.from_json(data)
    assert again == result
    assert again.endpoints() == {"pod-1": 3, "pod-3": 1}
    assert again.sources() == {"10.244.1.10", "192.168.77.11"}
    assert (again.ok, again.failures, again.attempts) == (4, 4, 8)


def test_extra_addresses_are_canonical_and_each_has_one_owner() -> None:
    node = Node(
        "n", 1, "192.168.0.10", "2001:db8::10", "10.0.0.0/8", "fd00:10::/32",
        extra_ips=("192.168.1.2", "2001:DB8:1::0002"),
    )  # fmt: skip
    assert node.extra_ips == ("192.168.1.2", "2001:db8:1::2")
    ext = External(ip4="192.168.0.100", ip6="2001:db8::100", extra_ips=("203.0.113.2",))
    topo = Topology(
        nodes=(node,), ext=ext, link4="192.168.0.0/24", link6="2001:db8::/64",
        loadbalancer_cidrs=("1.2.3.4/32", "5.6.7.8/32", "9.10.11.12/32"),
    )  # fmt: skip
    assert not topo.ext_router
    with pytest.raises(TopologyError, match=r"both have address 192\.168\.1\.2"):
        clash = External(ip4=ext.ip4, ip6=ext.ip6, extra_ips=("192.168.1.2",))
        Topology(nodes=(node,), ext=clash, link4=topo.link4, link6=topo.link6)
    with pytest.raises(TopologyError, match="node m extra_ips"):
        Node("m", 2, "192.168.0.11", "2001:db8::11", "10.1.0.0/16", "fd00:11::/32", ("x",))
