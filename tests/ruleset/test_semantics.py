"""Each kube-proxy behaviour, checked by evaluating the compiled ruleset (not the model)."""

from __future__ import annotations

from fractions import Fraction

from nftproxy.config import node_config
from tests.support.builders import (
    NODE,
    OUTSIDE,
    POD,
    build,
    endpoints,
    ep,
    port,
    reached,
    send,
    service,
)

THIRD = Fraction(1, 3)
HALF = Fraction(1, 2)


def test_cluster_ip_spreads_evenly_over_ready_endpoints_without_masquerade_from_pods():
    rs = build(
        [service()], [endpoints("web", [ep("10.244.1.1"), ep("10.244.2.1"), ep("10.244.3.1")])]
    )
    result = send(rs, "10.96.0.10")
    assert reached(result) == {
        "10.244.1.1:8080": THIRD,
        "10.244.2.1:8080": THIRD,
        "10.244.3.1:8080": THIRD,
    }
    assert not any(b.masquerade for b in result.branches)


def test_cluster_ip_from_outside_the_pod_network_or_the_node_is_masqueraded():
    rs = build([service()], [endpoints("web", [ep("10.244.1.1")])])
    assert all(b.masquerade for b in send(rs, "10.96.0.10", src=OUTSIDE).branches)
    from_node = send(rs, "10.96.0.10", src="192.168.0.1", from_node=True)
    assert reached(from_node) == {"10.244.1.1:8080": 1}
    assert all(b.masquerade for b in from_node.branches)


def test_masquerade_all_masquerades_pod_traffic_too():
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1"],
        cluster_cidrs=["10.244.0.0/16"],
        masquerade_all=True,
    )
    rs = build([service()], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert all(b.masquerade for b in send(rs, "10.96.0.10", node=node).branches)


def test_each_service_port_reaches_its_own_target_port_and_protocol():
    svc = service(ports=[port(80, name="http"), port(53, name="dns", proto="udp")])
    rs = build(
        [svc],
        [
            endpoints("web", [ep("10.244.1.1")], name="http", target=8080, slice_name="a"),
            endpoints(
                "web", [ep("10.244.1.1")], name="dns", target=5353, proto="udp", slice_name="b"
            ),
        ],
    )
    assert reached(send(rs, "10.96.0.10", 80)) == {"10.244.1.1:8080": 1}
    assert reached(send(rs, "10.96.0.10", 53, proto="udp")) == {"10.244.1.1:5353": 1}
    assert reached(send(rs, "10.96.0.10", 53, proto="tcp")) == {}
    assert reached(send(rs, "10.96.0.10", 443)) == {}


def test_sctp_service_ports_are_programmed():
    svc = service(ports=[port(9000, name="s", proto="sctp")])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")], name="s", proto="sctp", target=9000)])
    assert reached(send(rs, "10.96.0.10", 9000, proto="sctp")) == {"10.244.1.1:9000": 1}


def test_node_port_on_a_node_address_reaches_all_endpoints_masqueraded():
    svc = service(ports=[port(80, node_port=30080)])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1"), ep("10.244.2.1", "node-b")])])
    result = send(rs, "192.168.0.1", 30080, src=OUTSIDE)
    assert reached(result) == {"10.244.1.1:8080": HALF, "10.244.2.1:8080": HALF}
    assert all(b.masquerade for b in result.branches)
    assert reached(send(rs, "192.168.0.99", 30080, src=OUTSIDE)) == {}


def test_nodeport_addresses_limit_which_local_addresses_accept_node_ports():
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1", "172.16.0.1"],
        nodeport_addresses=["172.16.0.0/24"],
    )
    svc = service(ports=[port(80, node_port=30080)])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert reached(send(rs, "172.16.0.1", 30080, src=OUTSIDE, node=node)) == {"10.244.1.1:8080": 1}
    assert reached(send(rs, "192.168.0.1", 30080, src=OUTSIDE, node=node)) == {}


def test_nodeport_addresses_are_the_nodes_own_not_hosts_routed_through_it_in_the_cidr():
    """kube-proxy's nodeport-ips: the node's addresses within the CIDRs. A packet to another
    host of the CIDR, forwarded by this node, must pass untouched."""
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1", "fd00:192::1"],
        cluster_cidrs=["10.244.0.0/16", "fd00:244::/64"],
        nodeport_addresses=["192.168.0.0/24", "fd00:192::/64"],
    )
    svc = service(ports=[port(80, node_port=30080)], cluster_ips=("10.96.0.10", "fd00:96::10"))
    slices = [
        endpoints("web", [ep("10.244.1.1")]),
        endpoints("web", [ep("fd00:244::1")], family=6),
    ]
    rs = build([svc], slices, node=node)
    for own, other, pod in (
        ("192.168.0.1", "192.168.0.7", "10.244.1.1"),
        ("fd00:192::1", "fd00:192::7", "fd00:244::1"),
    ):
        outside = OUTSIDE if ":" not in own else "2001:db8::7"
        assert reached(send(rs, own, 30080, src=outside, node=node)) == {f"{pod}:8080": 1}
        routed = send(rs, other, 30080, src=outside, node=node)
        assert routed.branches == [], routed
        from_pod = send(rs, other, 30080, src=POD if ":" not in own else "fd00:244::50", node=node)
        assert from_pod.branches == [], from_pod


def test_nodeport_addresses_primary_selects_the_first_node_ip_of_each_family():
    node = node_config(
        node_name="node-a", node_ips=["192.168.0.1", "172.16.0.1"], nodeport_addresses=["primary"]
    )
    svc = service(ports=[port(80, node_port=30080)])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert reached(send(rs, "192.168.0.1", 30080, src=OUTSIDE, node=node)) == {"10.244.1.1:8080": 1}
    assert send(rs, "172.16.0.1", 30080, src=OUTSIDE, node=node).branches == []


def test_nodeport_addresses_never_include_loopback():
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1", "127.0.0.1"],
        nodeport_addresses=["127.0.0.0/8", "192.168.0.0/24"],
    )
    svc = service(ports=[port(80, node_port=30080)])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert send(rs, "127.0.0.1", 30080, src="127.0.0.1", from_node=True, node=node).branches == []
    from_node = send(rs, "192.168.0.1", 30080, src="192.168.0.1", from_node=True, node=node)
    assert reached(from_node) == {"10.244.1.1:8080": 1}


def test_load_balancer_ingress_and_external_ips_reach_endpoints_masqueraded():
    svc = service(load_balancer_ips=("198.51.100.10",), external_ips=("198.51.100.20",))
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])])
    for vip in ("198.51.100.10", "198.51.100.20"):
        result = send(rs, vip, src=OUTSIDE)
        assert reached(result) == {"10.244.1.1:8080": 1}
        assert all(b.masquerade for b in result.branches)


def test_service_without_endpoints_is_rejected_at_once():
    svc = service(ports=[port(80, node_port=30080)], load_balancer_ips=("198.51.100.10",))
    rs = build([svc], [])
    for dst, dport in (("10.96.0.10", 80), ("192.168.0.1", 30080), ("198.51.100.10", 80)):
        assert send(rs, dst, dport, src=OUTSIDE).outcomes() == {"reject": 1}


def test_external_policy_local_uses_only_local_endpoints_and_keeps_the_client_address():
    svc = service(
        ports=[port(80, node_port=30080)],
        load_balancer_ips=("198.51.100.10",),
        external_policy_local=True,
    )
    rs = build([svc], [endpoints("web", [ep("10.244.0.5"), ep("10.244.9.5", "node-b")])])
    for dst, dport in (("198.51.100.10", 80), ("192.168.0.1", 30080)):
        result = send(rs, dst, dport, src=OUTSIDE)
        assert reached(result) == {"10.244.0.5:8080": 1}
        assert not any(b.masquerade for b in result.branches)


def test_external_policy_local_seen_from_a_pod_or_the_node_uses_every_endpoint():
    svc = service(
        ports=[port(80, node_port=30080)],
        load_balancer_ips=("198.51.100.10",),
        external_policy_local=True,
    )
    rs = build([svc], [endpoints("web", [ep("10.244.0.5"), ep("10.244.9.5", "node-b")])])
    both = {"10.244.0.5:8080": HALF, "10.244.9.5:8080": HALF}
    assert reached(send(rs, "198.51.100.10", src=POD)) == both
    assert reached(send(rs, "192.168.0.1", 30080, src=POD)) == both
    from_node = send(rs, "198.51.100.10", src="192.168.0.1", from_node=True)
    assert reached(from_node) == both
    assert all(b.masquerade for b in from_node.branches)


def test_external_policy_local_without_local_endpoints_drops_outside_traffic():
    svc = service(load_balancer_ips=("198.51.100.10",), external_policy_local=True)
    rs = build([svc], [endpoints("web", [ep("10.244.9.5", "node-b")])])
    assert send(rs, "198.51.100.10", src=OUTSIDE).outcomes() == {"drop": 1}
    assert reached(send(rs, "198.51.100.10", src=POD)) == {"10.244.9.5:8080": 1}


def test_internal_policy_local_uses_only_this_nodes_endpoints_or_drops():
    svc = service(internal_policy_local=True)
    rs = build([svc], [endpoints("web", [ep("10.244.0.5"), ep("10.244.9.5", "node-b")])])
    assert reached(send(rs, "10.96.0.10")) == {"10.244.0.5:8080": 1}
    rs = build([svc], [endpoints("web", [ep("10.244.9.5", "node-b")])])
    assert send(rs, "10.96.0.10").outcomes() == {"drop": 1}


def test_terminating_endpoints_are_used_only_when_no_ready_endpoint_exists():
    ready = ep("10.244.1.1")
    draining = ep("10.244.1.2", ready=False, serving=True, terminating=True)
    dead = ep("10.244.1.3", ready=False, serving=False, terminating=True)
    rs = build([service()], [endpoints("web", [ready, draining, dead])])
    assert reached(send(rs, "10.96.0.10")) == {"10.244.1.1:8080": 1}
    rs = build([service()], [endpoints("web", [draining, dead])])
    assert reached(send(rs, "10.96.0.10")) == {"10.244.1.2:8080": 1}
    rs = build([service()], [endpoints("web", [dead])])
    assert send(rs, "10.96.0.10").outcomes() == {"reject": 1}


def test_zone_hints_keep_traffic_in_this_nodes_zone_when_every_endpoint_has_one():
    near = ep("10.244.1.1", zone_hints=frozenset({"zone-1"}))
    far = ep("10.244.2.1", "node-b", zone_hints=frozenset({"zone-2"}))
    rs = build([service()], [endpoints("web", [near, far])])
    assert reached(send(rs, "10.96.0.10")) == {"10.244.1.1:8080": 1}
    unhinted = ep("10.244.3.1", "node-c")
    rs = build([service()], [endpoints("web", [near, far, unhinted])])
    assert len(reached(send(rs, "10.96.0.10"))) == 3


def test_load_balancer_source_ranges_admit_listed_sources_and_drop_others():
    svc = service(
        load_balancer_ips=("198.51.100.10",), load_balancer_source_ranges=("203.0.113.0/24",)
    )
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])])
    assert reached(send(rs, "198.51.100.10", src="203.0.113.7")) == {"10.244.1.1:8080": 1}
    assert send(rs, "198.51.100.10", src="192.0.2.1").outcomes() == {"drop": 1}
    assert reached(send(rs, "10.96.0.10", src="192.0.2.1")) == {"10.244.1.1:8080": 1}


def test_a_pod_reaching_itself_through_its_service_is_masqueraded():
    rs = build([service()], [endpoints("web", [ep("10.244.0.50"), ep("10.244.1.1")])])
    result = send(rs, "10.96.0.10", src="10.244.0.50")
    masq = {f"{b.backend.ip}": b.masquerade for b in result.branches if b.backend}
    assert masq == {"10.244.0.50": True, "10.244.1.1": False}


def test_ipv6_and_ipv4_services_live_side_by_side():
    svc = service(cluster_ips=("10.96.0.10", "fd00:96::10"))
    rs = build(
        [svc],
        [
            endpoints("web", [ep("10.244.1.1")]),
            endpoints("web", [ep("fd00:244::1"), ep("fd00:244::2")], family=6),
        ],
    )
    assert reached(send(rs, "10.96.0.10")) == {"10.244.1.1:8080": 1}
    assert reached(send(rs, "fd00:96::10", src="fd00:244::99")) == {
        "fd00:244::1:8080": HALF,
        "fd00:244::2:8080": HALF,
    }


def test_session_affinity_spreads_first_connections_over_all_endpoints():
    svc = service(affinity_timeout=600)
    rs = build([svc], [endpoints("web", [ep("10.244.1.1"), ep("10.244.2.1")])])
    result = send(rs, "10.96.0.10")
    assert reached(result) == {"10.244.1.1:8080": HALF, "10.244.2.1:8080": HALF}
    assert any(step.startswith("aff4-") for b in result.branches for step in b.path)


def test_endpoints_listed_in_two_slices_count_once():
    rs = build(
        [service()],
        [
            endpoints("web", [ep("10.244.1.1"), ep("10.244.2.1")], slice_name="a"),
            endpoints("web", [ep("10.244.1.1")], slice_name="b"),
        ],
    )
    assert reached(send(rs, "10.96.0.10")) == {"10.244.1.1:8080": HALF, "10.244.2.1:8080": HALF}


def test_two_services_claiming_one_external_ip_resolve_to_the_first_by_name():
    a = service("a", cluster_ips=("10.96.0.1",), external_ips=("198.51.100.1",))
    b = service("b", cluster_ips=("10.96.0.2",), external_ips=("198.51.100.1",))
    slices = [endpoints("a", [ep("10.244.1.1")]), endpoints("b", [ep("10.244.2.2")])]
    rs = build([b, a], slices)
    assert reached(send(rs, "198.51.100.1", src=OUTSIDE)) == {"10.244.1.1:8080": 1}
    assert reached(send(rs, "10.96.0.2", src=POD)) == {"10.244.2.2:8080": 1}


def test_the_node_config_used_by_these_tests_is_dual_stack():
    assert NODE.cluster_cidrs_of(6) == ("fd00:244::/64",)


def test_node_ports_are_not_served_on_loopback():
    node = node_config(node_name="node-a", node_ips=["192.168.0.1", "127.0.0.1"])
    svc = service(ports=[port(80, node_port=30080)])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert reached(send(rs, "127.0.0.1", 30080, src="127.0.0.1", from_node=True, node=node)) == {}
    assert reached(
        send(rs, "192.168.0.1", 30080, src="192.168.0.1", from_node=True, node=node)
    ) == {"10.244.1.1:8080": 1}


def test_masquerade_all_keeps_the_client_address_of_local_policy_external_traffic():
    # upstream: kube-proxy's nftables mode adds masquerade-all to cluster IPs only.
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1"],
        cluster_cidrs=["10.244.0.0/16"],
        masquerade_all=True,
    )
    svc = service(
        ports=[port(80, node_port=30080)],
        load_balancer_ips=("198.51.100.10",),
        external_ips=("198.51.100.20",),
        external_policy_local=True,
    )
    rs = build([svc], [endpoints("web", [ep("10.244.0.5")])], node=node)
    for dst, dport in (("198.51.100.10", 80), ("198.51.100.20", 80), ("192.168.0.1", 30080)):
        result = send(rs, dst, dport, src=OUTSIDE, node=node)
        assert reached(result) == {"10.244.0.5:8080": 1}
        assert not any(b.masquerade for b in result.branches), (dst, dport)
    assert all(b.masquerade for b in send(rs, "10.96.0.10", node=node).branches)


def test_source_ranges_holding_a_node_ip_also_admit_the_load_balancer_ips():
    svc = service(
        load_balancer_ips=("198.51.100.10", "198.51.100.11"),
        load_balancer_source_ranges=("192.168.0.0/24", "203.0.113.0/25"),
    )
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])])
    for src in ("198.51.100.10", "198.51.100.11", "192.168.0.1", "203.0.113.7"):
        result = send(rs, "198.51.100.10", src=src, from_node=src != "203.0.113.7")
        assert reached(result) == {"10.244.1.1:8080": 1}, src
    assert send(rs, "198.51.100.10", src="203.0.113.200").outcomes() == {"drop": 1}
    # Without a node IP in the ranges, the load-balancer IPs are not sources either.
    svc = service(
        load_balancer_ips=("198.51.100.10",), load_balancer_source_ranges=("203.0.113.0/25",)
    )
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])])
    result = send(rs, "198.51.100.10", src="198.51.100.10", from_node=True)
    assert result.outcomes() == {"drop": 1}


def test_a_cluster_ip_port_or_protocol_the_service_lacks_is_rejected():
    svc = service(ports=[port(80), port(53, name="dns", proto="udp")])
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])])
    for dport, proto in ((81, "tcp"), (80, "udp"), (53, "tcp"), (80, "sctp")):
        for src, from_node in ((POD, False), ("192.168.0.1", True), (OUTSIDE, False)):
            result = send(rs, "10.96.0.10", dport, proto=proto, src=src, from_node=from_node)
            assert result.outcomes() == {"reject": 1}, (dport, proto, src)


def test_an_unallocated_address_of_the_service_cidrs_is_dropped():
    node = node_config(
        node_name="node-a",
        node_ips=["192.168.0.1", "fd00:192::1"],
        cluster_cidrs=["10.244.0.0/16"],
        service_cidrs=["10.96.0.0/16", "fd00:96::/112"],
    )
    rs = build([service()], [endpoints("web", [ep("10.244.1.1")])], node=node)
    assert send(rs, "10.96.0.11", node=node).outcomes() == {"drop": 1}
    assert send(rs, "fd00:96::11", src="fd00:244::5", node=node).outcomes() == {"drop": 1}
    assert send(rs, "10.96.0.10", 81, node=node).outcomes() == {"reject": 1}
    assert reached(send(rs, "10.96.0.10", node=node)) == {"10.244.1.1:8080": 1}
    # Outside the ranges nothing is touched: the packet is routed as it is.
    assert send(rs, "10.97.0.11", node=node).outcomes() == {}
    # No range known: unallocated addresses pass untouched.
    rs = build([service()], [endpoints("web", [ep("10.244.1.1")])])
    assert send(rs, "10.96.0.11").outcomes() == {}


def test_source_ranges_of_one_family_leave_the_other_family_unfiltered():
    # kube-proxy builds each family's firewall from that family's ranges only.
    svc = service(
        cluster_ips=("10.96.0.10", "fd00:96::10"),
        load_balancer_ips=("198.51.100.10", "2001:db8::10"),
        load_balancer_source_ranges=("203.0.113.0/24",),
    )
    rs = build(
        [svc],
        [
            endpoints("web", [ep("10.244.1.1")]),
            endpoints("web", [ep("fd00:244::1")], family=6),
        ],
    )
    assert reached(send(rs, "2001:db8::10", src="2001:db8:ffff::1")) == {"fd00:244::1:8080": 1}
    assert send(rs, "198.51.100.10", src="192.0.2.1").outcomes() == {"drop": 1}


def test_only_the_primary_node_ip_in_the_ranges_admits_the_load_balancer_ips():
    node = node_config(node_name="node-a", node_ips=["192.168.0.1", "192.168.5.1"])
    svc = service(
        load_balancer_ips=("198.51.100.10",), load_balancer_source_ranges=("192.168.5.0/24",)
    )
    rs = build([svc], [endpoints("web", [ep("10.244.1.1")])], node=node)
    result = send(rs, "198.51.100.10", src="198.51.100.10", from_node=True, node=node)
    assert result.outcomes() == {"drop": 1}
