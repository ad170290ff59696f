"""Stale UDP conntrack entries: encoding checks, then real flows through a lab cluster.

A UDP client that keeps its source port keeps its conntrack entry, and with it the endpoint
DNAT picked for the first datagram, after that endpoint left the Service. These tests
prove the entry is stuck, then that `clear_stale` unsticks it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from nftproxy import conntrack
from nftproxy.conntrack import ConntrackCleaner, Flow, Stale
from nftproxy.kernel.backend import open_backend
from nftproxy.lab import Lab, default_topology
from tests.support.e2e_cluster import HTTP, Cluster, endpoint, slice_of, svc
from tests.support.kernel import require_kernel

VIP = "10.96.0.53"
PORT = 53
NODE_PORT = 30053


def flow(**kw: object) -> Flow:
    base: dict[str, object] = dict(
        orig_src="10.0.1.2",
        orig_sport=40000,
        orig_dst=VIP,
        orig_dport=PORT,
        reply_src="10.0.2.3",
        reply_sport=HTTP,
        proto=17,
        family=4,
    )
    base.update(kw)
    return Flow(**base)  # type: ignore[arg-type]


# --- without a kernel ----------------------------------------------------------------------


def test_stale_matches_the_frontend_and_the_removed_endpoint():
    rule = Stale(VIP, PORT, "10.0.2.3", HTTP)
    assert rule.matches(flow())
    assert not rule.matches(flow(reply_src="10.0.2.4"))  # another endpoint: still alive
    assert not rule.matches(flow(reply_sport=9999))
    assert not rule.matches(flow(orig_dst="10.96.0.54"))
    assert not rule.matches(flow(orig_dport=54))
    assert not rule.matches(flow(proto=6))
    assert Stale(VIP, PORT, "10.0.2.3", None).matches(flow(reply_sport=9999))
    assert Stale(VIP, PORT, "10.0.2.3", proto="tcp").matches(flow(proto=6))


def test_node_port_stale_matches_any_destination_address():
    rule = Stale(None, NODE_PORT, "10.0.2.3", HTTP)
    assert rule.matches(flow(orig_dst="192.168.0.1", orig_dport=NODE_PORT))
    assert rule.matches(flow(orig_dst="127.0.0.1", orig_dport=NODE_PORT))
    assert not rule.matches(flow(orig_dst="192.168.0.1", orig_dport=PORT))


def test_un_nated_stale_only_matches_flows_that_were_not_nated():
    rule = Stale(VIP, PORT, None)
    assert rule.matches(flow(reply_src=VIP, reply_sport=PORT))
    assert not rule.matches(flow())


def test_un_nated_node_port_rule_names_its_family():
    rule = Stale(None, NODE_PORT, None, nodeport_family=4)
    assert rule.family == 4
    assert rule.matches(
        flow(
            orig_dst="192.168.0.1",
            orig_dport=NODE_PORT,
            reply_src="192.168.0.1",
            reply_sport=NODE_PORT,
        )
    )
    assert not rule.matches(flow(orig_dst="192.168.0.1", orig_dport=NODE_PORT))  # NATed
    v6 = flow(
        orig_dst="fd00::1",
        orig_dport=NODE_PORT,
        reply_src="fd00::1",
        reply_sport=NODE_PORT,
        family=6,
    )
    assert not rule.matches(v6)
    assert Stale(None, NODE_PORT, None, nodeport_family=6).matches(v6)
    with pytest.raises(ValueError):
        Stale(VIP, PORT, None, nodeport_family=4)  # a frontend address has its own family
    with pytest.raises(ValueError):
        Stale(None, PORT, "fd00::1", nodeport_family=4)


def test_a_keep_rule_matches_whatever_answers_but_the_current_endpoints():
    rule = Stale(VIP, PORT, None, keep=frozenset({("10.0.2.3", HTTP)}))
    assert not rule.matches(flow())  # a current endpoint
    assert rule.matches(flow(reply_src="10.0.2.9"))  # an endpoint the frontend no longer has
    assert rule.matches(flow(reply_sport=9999))  # the right pod, a port it no longer serves
    assert rule.matches(flow(reply_src=VIP, reply_sport=PORT))  # never NATed
    assert not rule.matches(flow(orig_dport=54))
    with pytest.raises(ValueError):
        Stale(VIP, PORT, "10.0.2.3", keep=frozenset())


def test_stale_addresses_are_normalised_and_families_checked():
    rule = Stale("FD00::0053", PORT, "fd00:0:0::1")
    assert rule.family == 6 and rule.frontend_ip == "fd00::53"
    v6 = flow(orig_dst="fd00::53", reply_src="fd00::1", family=6)
    assert rule.matches(v6)
    assert not Stale(VIP, PORT, "10.0.2.3").matches(v6)
    with pytest.raises(ValueError):
        Stale(VIP, PORT, "fd00::1")
    with pytest.raises(ValueError):
        Stale(None, PORT, None)


def test_delete_request_layout():
    """CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4_SRC, V4_DST }, CTA_TUPLE_PROTO { NUM, SPORT, DPORT } },
    nests flagged, ports big-endian; CTA_ZONE only for a non-default zone."""
    f = flow()
    raw = conntrack.encode_orig(f)
    top = conntrack.attributes(raw)
    assert list(top) == [conntrack.CTA_TUPLE_ORIG]
    assert int.from_bytes(raw[2:4], "little") & conntrack.NLA_F_NESTED
    assert conntrack.parse_tuple(top[conntrack.CTA_TUPLE_ORIG], 4) == conntrack.ConnTuple(
        f.orig_src, f.orig_dst, f.orig_sport, f.orig_dport, 17
    )
    proto = conntrack.attributes(conntrack.attributes(top[conntrack.CTA_TUPLE_ORIG])[2])
    assert proto == {1: b"\x11", 2: (40000).to_bytes(2, "big"), 3: (53).to_bytes(2, "big")}
    zoned = conntrack.attributes(conntrack.encode_orig(flow(zone=7)))
    assert zoned[conntrack.CTA_ZONE] == b"\x00\x07"


# --- through a lab -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_kernel()
    with Lab.create(default_topology(nodes=2, pods_per_node=2)) as lab:
        c = Cluster(lab)
        try:
            lab.start_echo_all(tcp=(HTTP,), udp=(HTTP,))
            for node in lab.topology.nodes:
                c.backends[node.name] = open_backend(str(lab.ns_path(node)))
            yield c
        finally:
            for backend in c.backends.values():
                backend.close()


@pytest.fixture
def cleaners(cluster: Cluster) -> Iterator[dict[str, ConntrackCleaner]]:
    made = {
        n.name: ConntrackCleaner(str(cluster.lab.ns_path(n))) for n in cluster.lab.topology.nodes
    }
    try:
        for cleaner in made.values():  # what earlier tests left (lab namespaces only)
            cleaner.delete_flows(cleaner.list_flows("udp", 4))
        yield made
    finally:
        for cleaner in made.values():
            cleaner.close()


def dns(c: Cluster, pods: tuple[str, ...]) -> None:
    s = svc("dns", VIP, ports=[("dns", "udp", PORT, NODE_PORT)])
    sl = slice_of("dns", [endpoint(c.pod(p)) for p in pods], ports=[("dns", "udp", HTTP)])
    c.apply([s], [sl])


class Client:
    """A UDP socket in a lab namespace, bound to a fixed port: one conntrack entry."""

    def __init__(self, c: Cluster, who: str, sport: int) -> None:
        self.sock = c.lab.socket(who, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", sport))
        self.sock.settimeout(2.0)

    def ask(self, host: str, port: int) -> str:
        """The name of the pod that answered."""
        self.sock.sendto(b"hi\n", (host, port))
        data, _ = self.sock.recvfrom(2048)
        return data.decode().split()[0]

    def close(self) -> None:
        self.sock.close()


def one_flow(cleaner: ConntrackCleaner, sport: int, dport: int) -> Flow:
    flows = [
        f for f in cleaner.list_flows("udp", 4) if f.orig_sport == sport and f.orig_dport == dport
    ]
    assert len(flows) == 1, flows
    return flows[0]


def test_lists_and_deletes_a_flow_and_a_gone_one_is_not_an_error(cluster, cleaners):
    dns(cluster, ("pod-3",))
    client = Client(cluster, "pod-1", 41001)
    try:
        assert client.ask(VIP, PORT) == "pod-3"
        node1 = cleaners["node-1"]
        f = one_flow(node1, 41001, PORT)
        pod1, pod3 = cluster.pod("pod-1").ip4, cluster.pod("pod-3").ip4
        assert (f.orig_src, f.orig_dst, f.reply_src, f.reply_sport) == (pod1, VIP, pod3, HTTP)
        assert f.proto == 17 and f.family == 4
        assert f not in node1.list_flows("tcp", 4)
        assert node1.delete_flows([f]) == 1
        assert node1.delete_flows([f]) == 0  # ENOENT: already gone
        assert not [g for g in node1.list_flows() if g.orig_sport == 41001]
    finally:
        client.close()


def test_cluster_ip_flow_to_a_removed_endpoint_sticks_until_cleared(cluster, cleaners):
    node1 = cleaners["node-1"]
    dns(cluster, ("pod-3", "pod-4"))
    client = Client(cluster, "pod-1", 41002)
    try:
        first = client.ask(VIP, PORT)
        assert first in ("pod-3", "pod-4")
        assert all(client.ask(VIP, PORT) == first for _ in range(5))
        gone = cluster.pod(first)
        other = "pod-4" if first == "pod-3" else "pod-3"
        assert one_flow(node1, 41002, PORT).reply_src == gone.ip4

        dns(cluster, (other,))
        # UDP has no end: the same 5-tuple keeps its entry and the endpoint it picked.
        assert all(client.ask(VIP, PORT) == first for _ in range(3))
        assert one_flow(node1, 41002, PORT).reply_src == gone.ip4

        # Rules for other frontends or endpoints leave it alone.
        assert node1.clear_stale([Stale(VIP, PORT, cluster.pod(other).ip4, HTTP)]) == 0
        assert node1.clear_stale([Stale("10.96.0.99", PORT, gone.ip4, HTTP)]) == 0
        assert node1.clear_stale([Stale(VIP, PORT, gone.ip4, HTTP)]) == 1
        assert client.ask(VIP, PORT) == other
        assert one_flow(node1, 41002, PORT).reply_src == cluster.pod(other).ip4
    finally:
        client.close()


def test_node_port_flow_to_a_removed_endpoint_sticks_until_cleared(cluster, cleaners):
    node2 = cleaners["node-2"]
    node_ip = cluster.node_ip("node-2")
    dns(cluster, ("pod-1", "pod-2"))
    client = Client(cluster, "ext", 41003)
    try:
        first = client.ask(node_ip, NODE_PORT)
        assert first in ("pod-1", "pod-2")
        other = "pod-2" if first == "pod-1" else "pod-1"
        gone = cluster.pod(first)
        f = one_flow(node2, 41003, NODE_PORT)
        assert (f.orig_dst, f.reply_src) == (node_ip, gone.ip4)

        dns(cluster, (other,))
        assert all(client.ask(node_ip, NODE_PORT) == first for _ in range(3))

        assert node2.clear_stale([Stale(VIP, PORT, gone.ip4, HTTP)]) == 0  # not the NodePort
        assert node2.clear_stale([Stale(None, NODE_PORT, gone.ip4, HTTP)]) == 1
        assert client.ask(node_ip, NODE_PORT) == other
        assert one_flow(node2, 41003, NODE_PORT).reply_src == cluster.pod(other).ip4
    finally:
        client.close()


def test_flow_from_before_the_service_had_endpoints_is_un_nated_until_cleared(cluster, cleaners):
    """Datagrams sent before the Service existed were forwarded as they were: their entry,
    not NATed, keeps later datagrams of the same 5-tuple away from the new rules."""
    node1 = cleaners["node-1"]
    cluster.apply([], [])
    client = Client(cluster, "pod-1", 41004)
    try:
        with pytest.raises(TimeoutError):
            client.ask(VIP, PORT)
        f = one_flow(node1, 41004, PORT)
        assert (f.reply_src, f.reply_sport) == (VIP, PORT)  # not NATed

        dns(cluster, ("pod-3",))
        with pytest.raises(TimeoutError):
            client.ask(VIP, PORT)
        assert one_flow(node1, 41004, PORT).reply_src == VIP

        assert node1.clear_stale([Stale(VIP, PORT, cluster.pod("pod-3").ip4, HTTP)]) == 0
        assert node1.clear_stale([Stale(VIP, PORT, None)]) == 1
        assert client.ask(VIP, PORT) == "pod-3"
        assert one_flow(node1, 41004, PORT).reply_src == cluster.pod("pod-3").ip4
    finally:
        client.close()


def test_a_missing_namespace_fails_at_once(tmp_path):
    require_kernel()
    with pytest.raises(FileNotFoundError):
        ConntrackCleaner(str(tmp_path / "nope"))
