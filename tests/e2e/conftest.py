"""One lab for the end-to-end suite: 2 nodes x 3 pods, echo servers everywhere, an outside
client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nftproxy.kernel.backend import open_backend
from nftproxy.lab import Lab, default_topology
from tests.support.e2e_cluster import ECHO, HTTP, Cluster
from tests.support.kernel import require_kernel


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    require_kernel()
    with Lab.create(default_topology(nodes=2, pods_per_node=3)) as lab:
        lab.start_echo_all(tcp=(HTTP,), udp=(HTTP,), echo_tcp=(ECHO,))
        c = Cluster(lab)
        for node in lab.topology.nodes:
            # Refusals are ICMP errors, which the kernel rate-limits per client (a burst of
            # about six, then one a second). Tests count every refusal, so the lab's nodes
            # send them all; this is the namespace's own setting, not the machine's.
            lab.exec(
                node, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"]
            )
            c.backends[node.name] = open_backend(str(lab.ns_path(node)))
        yield c
        for backend in c.backends.values():
            backend.close()
