"""Where kube-proxy's nftables mode differs from its iptables mode, nftproxy follows the
nftables mode; each case with real packets (the tables' cases: tests/ruleset)."""

from __future__ import annotations

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
