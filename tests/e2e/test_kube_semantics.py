"""Where kube-proxy's nftables mode differs from its iptables mode, nftproxy follows the
nftables mode; each case with real packets (the tables' cases: tests/ruleset)."""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import time
from collections.abc import Iterator

import pytest

from nftproxy.kernel.netns import run_in_netns
from tests.support.e2e_cluster import Cluster, endpoint, slice_of, svc

pytestmark = pytest.mark.kernel

ETH_P_IP = 0x0800


class Capture:
    """IPv4 packets that reach the outside client's namespace, by destination."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def destinations(self, wait: float = 0.3) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            packet = self.sock.recv(65535)
            if len(packet) >= 20:
                seen.append(str(ipaddress.IPv4Address(packet[16:20])))
        return seen


@contextlib.contextmanager
def capture_at_ext(cluster: Cluster) -> Iterator[Capture]:
    path = cluster.lab.ns_path("ext")
    sock = run_in_netns(
        path, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    )
    try:
        yield Capture(sock)
    finally:
        sock.close()


def test_masquerade_all_keeps_the_client_address_for_local_external_policy(cluster):
    s = svc(
        "local",
        "10.96.0.30",
        ports=[("http", "tcp", 80, 30030)],
        load_balancer_ips=("198.51.100.30",),
        external_policy_local=True,
    )
    cluster.apply([s], [slice_of("local", [endpoint(cluster.pod("pod-1"))])], masquerade_all=True)
    for host, port in (("198.51.100.30", 80), (cluster.node_ip("node-1"), 30030)):
        result = cluster.lab.connect("ext", host, port, count=5, in_process=True)
        assert result.failures == 0, result.summary()
        assert result.sources() == {cluster.ext_ip}, (host, port)
    # The cluster IP is masqueraded for everyone, pods included.
    result = cluster.lab.connect("pod-2", "10.96.0.30", 80, count=5, in_process=True)
    assert result.failures == 0
    assert cluster.pod("pod-2").ip4 not in result.sources()


@pytest.fixture
def lb_ip_on_node_1(cluster):
    """A load-balancer IP that node-1 holds itself, as VIP-style load balancers set up."""
    vip = "198.51.100.31"
    cluster.lab.exec("node-1", ["ip", "addr", "add", f"{vip}/32", "dev", "lo"])
    yield vip
    cluster.lab.exec("node-1", ["ip", "addr", "del", f"{vip}/32", "dev", "lo"])


def test_source_ranges_with_the_node_ip_let_the_node_reach_its_own_load_balancer_ip(
    cluster, lb_ip_on_node_1
):
    node_net = str(ipaddress.ip_network(f"{cluster.node_ip('node-1')}/24", strict=False))
    s = svc(
        "fenced",
        "10.96.0.31",
        load_balancer_ips=(lb_ip_on_node_1,),
        load_balancer_source_ranges=(node_net,),
    )
    cluster.apply([s], [slice_of("fenced", [endpoint(cluster.pod("pod-4"))])])
    # The VIP is local: the node's connection leaves from the VIP itself.
    result = cluster.lab.connect("node-1", lb_ip_on_node_1, 80, count=5, in_process=True)
    assert result.endpoints() == {"pod-4": 5}, result.summary()


def test_a_cluster_ip_port_the_service_lacks_is_refused_and_never_leaves_the_node(cluster):
    s = svc("web", "10.96.0.32", ports=[("http", "tcp", 80, None), ("dns", "udp", 53, None)])
    cluster.apply([s], [slice_of("web", [endpoint(cluster.pod("pod-4"))])])
    with capture_at_ext(cluster) as cap:
        for who in ("pod-1", "node-1"):
            for port, proto in ((81, "tcp"), (80, "udp"), (53, "tcp")):
                result = cluster.lab.connect(
                    who, "10.96.0.32", port, proto=proto, count=3, timeout=2.0, in_process=True
                )
                if who == "node-1" and proto == "udp":
                    # The node's own datagram is rejected on its way out: sendto() fails.
                    assert result.errors == {"EPERM": 3}, result.summary()
                else:
                    assert result.refused == 3, (who, port, proto, result.summary())
        assert "10.96.0.32" not in cap.destinations()
    assert cluster.lab.connect("pod-1", "10.96.0.32", 80, in_process=True).endpoints() == {
        "pod-4": 1
    }


def test_an_unallocated_service_address_is_dropped_not_sent_to_the_network(cluster):
    s = svc("web", "10.96.0.33")
    cluster.apply(
        [s],
        [slice_of("web", [endpoint(cluster.pod("pod-4"))])],
        service_cidrs=["10.96.0.0/16"],
    )
    with capture_at_ext(cluster) as cap:
        for who in ("pod-1", "node-1"):
            result = cluster.lab.connect(who, "10.96.0.99", 80, timeout=0.5, in_process=True)
            assert result.timeouts == 1, (who, result.summary())
        assert "10.96.0.99" not in cap.destinations()
    # Outside the service ranges the node routes as ever: to the outside client here.
    with capture_at_ext(cluster) as cap:
        cluster.lab.connect("pod-1", "10.97.0.99", 80, timeout=0.5, in_process=True)
        assert "10.97.0.99" in cap.destinations()
