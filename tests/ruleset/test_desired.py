"""The desired state kept incrementally: endpoint maps stored per frontend, conflicts between
Services, and the change scope an incremental diff reads. Checked against a fake kernel
(FakeBackend) and a fresh full build of the same Services."""

from __future__ import annotations

import dataclasses

from nftproxy.applying import generation_plan
from nftproxy.config import NodeConfig
from nftproxy.kernel.fake import FakeBackend
from nftproxy.model import EndpointSlice, Service
from nftproxy.ruleset.compile import Names, compile_all
from nftproxy.ruleset.desired import Blocks, DesiredState
from nftproxy.ruleset.diff import AppliedState, diff
from nftproxy.ruleset.transaction import AddElements, DeleteElements
from tests.support.builders import NODE, OUTSIDE, build, endpoints, ep, port, reached, send, service

LB = "198.51.100.1"


class Cluster:
    """A desired state and a fake kernel kept in step the way the daemon does."""

    def __init__(self, services: list[Service], slices: list[EndpointSlice]) -> None:
        self.names = Names()
        self.desired = DesiredState(NODE, self.names)
        self.table = FakeBackend()
        self.services: dict = {}
        self.apply(services, slices, first=True)

    def apply(
        self, services: list[Service], slices: list[EndpointSlice], *, first: bool = False
    ) -> None:
        frags = compile_all({s.id: s for s in services}, slices, NODE, self.names)
        for sid in self.services.keys() - frags.keys():
            self.desired.set_service(sid, None)
        for sid, frag in frags.items():
            self.desired.set_service(sid, frag)
        self.services = frags
        scope = self.desired.take_changes()
        if first:
            plan = generation_plan(lambda _: self.desired.ruleset, None, 1, "cold")
            for tx in plan.transactions:
                self.table.apply(tx)
        else:
            self.table.apply(diff(self.desired.ruleset, self.table.state, scope))
        fresh = build(services, slices, names=self.names)
        assert self.table.state == AppliedState.of(fresh)


def three(prefix: str) -> list:
    return [ep(f"{prefix}.{i}") for i in (1, 2, 3)]


def test_endpoint_maps_are_kept_per_frontend_and_read_per_bucket():
    svc = service(cluster_ips=("10.96.0.10",))
    state = Cluster([svc], [endpoints("web", three("10.244.1"))])
    emap = state.desired.ruleset.elements[
        state.names.endpoints(4, "tcp", local=False, nodeport=False)
    ]
    assert isinstance(emap, Blocks)
    assert len(emap) == 3
    assert emap[("10.96.0.10", 80, 2)] == ("10.244.1.3", 8080)
    assert ("10.96.0.10", 80, 3) not in emap
    assert sorted(emap.items()) == [
        (("10.96.0.10", 80, i), (f"10.244.1.{i + 1}", 8080)) for i in range(3)
    ]


def test_when_the_winner_of_a_shared_ip_leaves_the_other_service_gets_all_its_buckets():
    a = service("a", cluster_ips=("10.96.0.1",), external_ips=(LB,))
    b = service("b", cluster_ips=("10.96.0.2",), external_ips=(LB,))
    slices = [endpoints("a", [ep("10.244.1.1")]), endpoints("b", three("10.244.2"))]
    state = Cluster([a, b], slices)
    rs = state.desired.ruleset
    assert reached(send(rs, LB, src=OUTSIDE)) == {"10.244.1.1:8080": 1}
    # "a" goes away: the LB frontend passes to "b", which has three buckets, not one.
    state.apply([b], slices[1:])
    got = reached(send(state.desired.ruleset, LB, src=OUTSIDE))
    assert set(got) == {f"10.244.2.{i}:8080" for i in (1, 2, 3)}


def test_when_a_service_with_more_endpoints_wins_a_shared_ip_the_extra_buckets_appear():
    b = service("b", cluster_ips=("10.96.0.2",), external_ips=(LB,))
    slices_b = [endpoints("b", [ep("10.244.2.1")])]
    state = Cluster([b], slices_b)
    # "a" sorts first, so it takes the LB frontend from "b" with three endpoints.
    a = service("a", cluster_ips=("10.96.0.1",), external_ips=(LB,))
    slices = [endpoints("a", three("10.244.1")), *slices_b]
    state.apply([a, b], slices)
    got = reached(send(state.desired.ruleset, LB, src=OUTSIDE))
    assert set(got) == {f"10.244.1.{i}:8080" for i in (1, 2, 3)}
    # And back: fewer buckets again once "a" shrinks to one endpoint.
    state.apply([a, b], [endpoints("a", [ep("10.244.1.9")]), *slices_b])
    assert reached(send(state.desired.ruleset, LB, src=OUTSIDE)) == {"10.244.1.9:8080": 1}


def test_endpoints_on_different_target_ports_keep_their_own_port():
    svc = service(cluster_ips=("10.96.0.10",))
    slices = [
        endpoints("web", [ep("10.244.1.1")], slice_name="s1", target=8080),
        endpoints("web", [ep("10.244.1.2")], slice_name="s2", target=9090),
    ]
    state = Cluster([svc], slices)
    got = reached(send(state.desired.ruleset, "10.96.0.10"))
    assert set(got) == {"10.244.1.1:8080", "10.244.1.2:9090"}
    state.apply([svc], slices[:1])
    assert reached(send(state.desired.ruleset, "10.96.0.10")) == {"10.244.1.1:8080": 1}


def test_a_pod_in_several_services_keeps_its_hairpin_element_until_the_last_one_leaves():
    shared = "10.244.1.1"
    services = [service(n, cluster_ips=(f"10.96.0.{i}",)) for i, n in enumerate("abc", 1)]
    slices = [endpoints(n, [ep(shared), ep(f"10.244.{i}.9")]) for i, n in enumerate("abc", 2)]
    state = Cluster(services, slices)
    hairpin = state.desired.ruleset.elements[state.names("hairpin4")]
    assert (shared, shared) in hairpin
    # One Service at a time leaves, the others are not compiled again.
    for gone in range(3):
        state.desired.set_service(services[gone].id, None)
        scope = state.desired.take_changes()
        state.table.apply(diff(state.desired.ruleset, state.table.state, scope))
        left, left_slices = services[gone + 1 :], slices[gone + 1 :]
        fresh = build(left, left_slices, names=state.names)
        assert state.table.state == AppliedState.of(fresh)
        assert ((shared, shared) in hairpin) == bool(left)
    assert len(hairpin) == 0


def lb(name: str, vip: int, *ranges: str) -> Service:
    return service(
        name,
        cluster_ips=(f"10.96.0.{vip}",),
        load_balancer_ips=(LB,),
        load_balancer_source_ranges=ranges,
    )


def test_services_sharing_a_load_balancer_ip_and_port_get_the_winners_firewall_only():
    a, b = lb("a", 1, "10.0.0.0/8"), lb("b", 2, "10.1.0.0/16", "192.0.2.0/24")
    slices = [endpoints("a", [ep("10.244.1.1")]), endpoints("b", [ep("10.244.2.2")])]
    state = Cluster([b, a], slices)
    rs = state.desired.ruleset
    # One firewall, a's: b's nested range would make the kernel refuse the transaction,
    # and b's other range must not open a's Service.
    assert set(rs.elements[state.names("firewall-allow4")]) == {(LB, "tcp", 80, "10.0.0.0/8")}
    assert send(rs, LB, src="192.0.2.1").outcomes() == {"drop": 1}
    assert reached(send(rs, LB, src="10.1.0.1")) == {"10.244.1.1:8080": 1}
    assert (state.names("firewall-allow4"), (LB, "tcp", 80)) in state.desired.conflicts
    # a goes away: b's frontend and b's firewall take over together.
    state.apply([b], slices[1:])
    rs = state.desired.ruleset
    assert set(rs.elements[state.names("firewall-allow4")]) == {
        (LB, "tcp", 80, "10.1.0.0/16"),
        (LB, "tcp", 80, "192.0.2.0/24"),
    }
    assert reached(send(rs, LB, src="192.0.2.1")) == {"10.244.2.2:8080": 1}
    assert send(rs, LB, src="10.2.0.1").outcomes() == {"drop": 1}


def test_a_winner_without_source_ranges_is_not_filtered_by_the_losers_firewall():
    a, b = lb("a", 1), lb("b", 2, "10.1.0.0/16")
    slices = [endpoints("a", [ep("10.244.1.1")]), endpoints("b", [ep("10.244.2.2")])]
    state = Cluster([a, b], slices)
    rs = state.desired.ruleset
    assert not rs.elements[state.names("firewall4")]
    assert reached(send(rs, LB, src=OUTSIDE)) == {"10.244.1.1:8080": 1}
    # a changes to a plain external IP on the same address: still a's, still unfiltered.
    a_ext = service("a", cluster_ips=("10.96.0.1",), external_ips=(LB,))
    state.apply([a_ext, b], slices)
    assert reached(send(state.desired.ruleset, LB, src=OUTSIDE)) == {"10.244.1.1:8080": 1}
    # a leaves: b's firewall applies.
    state.apply([b], slices[1:])
    assert send(state.desired.ruleset, LB, src=OUTSIDE).outcomes() == {"drop": 1}
    state.apply([lb("b", 2, "203.0.113.0/24")], slices[1:])
    assert reached(send(state.desired.ruleset, LB, src=OUTSIDE)) == {"10.244.2.2:8080": 1}


def desired_of(
    services: list[Service], slices: list[EndpointSlice], node: NodeConfig, names: Names
) -> DesiredState:
    desired = DesiredState(node, names)
    for sid, frag in compile_all({s.id: s for s in services}, slices, node, names).items():
        desired.set_service(sid, frag)
    return desired


def test_new_node_addresses_change_only_the_node_port_addresses_in_place():
    node = dataclasses.replace(NODE, nodeport_addresses=("192.168.0.0/16",))
    svc = service(ports=[port(80, node_port=30080)])
    slices = [endpoints("web", [ep("10.244.1.1")])]
    names = Names()
    desired = desired_of([svc], slices, node, names)
    before = AppliedState.of(desired.ruleset)
    desired.take_changes()
    moved = dataclasses.replace(node, interface_ips=("192.168.0.1", "192.168.9.9", "10.0.0.1"))
    assert desired.set_node(moved)
    tx = diff(desired.ruleset, before, desired.take_changes())
    assert [(type(op), op.set) for op in tx.ops] == [(AddElements, "g1-nodeport-ips4")]
    fresh = desired_of([svc], slices, moved, names)
    assert AppliedState.of(desired.ruleset) == AppliedState.of(fresh.ruleset)
    assert desired.digest == fresh.digest
    gone = dataclasses.replace(moved, interface_ips=("192.168.9.9",))
    assert desired.set_node(gone)
    tx = diff(desired.ruleset, AppliedState.of(fresh.ruleset), desired.take_changes())
    assert [(type(op), op.set) for op in tx.ops] == [(DeleteElements, "g1-nodeport-ips4")]
    # Anything else compiles Services or the skeleton differently: not in place.
    assert not desired.set_node(dataclasses.replace(gone, zone="zone-9"))
    assert not desired.set_node(dataclasses.replace(gone, nodeport_addresses=()))


def test_service_cidrs_change_in_place_but_node_ips_recompile_the_services():
    svc = service(load_balancer_ips=(LB,), load_balancer_source_ranges=("192.168.0.0/24",))
    slices = [endpoints("web", [ep("10.244.1.1")])]
    names = Names()
    desired = desired_of([svc], slices, NODE, names)
    before = AppliedState.of(desired.ruleset)
    desired.take_changes()
    ranged = dataclasses.replace(NODE, service_cidrs=("10.96.0.0/16",))
    assert desired.set_node(ranged)
    tx = diff(desired.ruleset, before, desired.take_changes())
    assert [(type(op), op.set) for op in tx.ops] == [(AddElements, "g1-service-cidrs4")]
    # The node IPs decide whether the load-balancer IPs are sources of its firewall.
    assert not desired.set_node(dataclasses.replace(ranged, node_ips=("10.1.1.1",)))
