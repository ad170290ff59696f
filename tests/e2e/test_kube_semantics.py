"""Where kube-proxy's nftables mode differs from its iptables mode, nftproxy follows the
nftables mode; each case with real packets (the tables' cases: tests/ruleset)."""

from __future__ import annotations

import ipaddress

import pytest
from e2e_cluster import endpoint, slice_of, svc

pytestmark = pytest.mark.kernel


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
