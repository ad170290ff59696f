"""--nodeport-addresses with real packets: only the node's own addresses in the CIDRs accept
NodePorts; a connection to another host of the same CIDR, routed through the node, reaches
that host untouched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.lab import Lab, default_topology
from tests.support.kernel import require_kernel

pytestmark = pytest.mark.kernel

NODE_PORT = 30080


def web_manifest(lab: Lab) -> str:
    pods = lab.topology.pods
    return (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec:\n  type: NodePort\n  clusterIPs: [10.96.0.10, 'fd00:96::10']\n"
        "  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n"
        f"  ports: [{{name: http, port: 80, nodePort: {NODE_PORT}}}]\n"
        + "".join(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: web-{fam}, namespace: default, "
            "labels: {kubernetes.io/service-name: web}}\n"
            f"addressType: IPv{fam}\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
            + "".join(f"- {{addresses: ['{p.ip(fam)}'], nodeName: {p.node}}}\n" for p in pods)
            for fam in (4, 6)
        )
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    """node-1 and node-2 with a pod each; ext reaches node-2's addresses through node-1
    (a router between them, say), and node-2 itself listens on the NodePort's number."""
    require_kernel()
    with Lab.create(default_topology(nodes=2, pods_per_node=1)) as lab:
        lab.start_echo_all(tcp=(8080,), udp=())
        lab.start_echo("node-2", tcp=(NODE_PORT,), udp=(), name="node-2")
        node1, node2 = lab.topology.nodes
        lab.exec("ext", ["ip", "route", "replace", f"{node2.ip4}/32", "via", node1.ip4])
        lab.exec("ext", ["ip", "-6", "route", "replace", f"{node2.ip6}/128", "via", node1.ip6])
        # Routed there and back out of the same link: node-1 must not tell ext the shortcut,
        # or later packets would bypass it.
        lab.exec(
            "node-1",
            [
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
            ],
        )
        lab.exec(
            "ext",
            [
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.eth0.accept_redirects=0",
            ],
        )
        yield lab


def test_a_node_port_address_cidr_does_not_capture_another_host_routed_through_the_node(
    lab: Lab, tmp_path: Path
):
    manifests = tmp_path / "web.yaml"
    manifests.write_text(web_manifest(lab))
    node1, node2 = lab.topology.nodes
    applied = subprocess.run(
        [
            sys.executable,
            "-m",
            "nftproxy",
            "apply",
            str(manifests),
            "--netns",
            lab.ns("node-1"),
            "--node-name",
            "node-1",
            "--node-ip",
            node1.ip4,
            "--node-ip",
            node1.ip6,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cluster-cidr",
            "fd00:244::/32",
            # Both nodes' addresses are in these; only node-1's own accept its NodePorts.
            "--nodeport-addresses",
            lab.topology.link4,
            "--nodeport-addresses",
            lab.topology.link6,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    pods = {p.name for p in lab.topology.pods}
    for own, other, client in (
        (node1.ip4, node2.ip4, lab.topology.ext.ip4),
        (node1.ip6, node2.ip6, lab.topology.ext.ip6),
    ):
        served = lab.connect("ext", own, NODE_PORT, count=10, in_process=True)
        assert served.failures == 0, served.summary()
        assert set(served.endpoints()) <= pods, served.summary()
        routed = lab.connect("ext", other, NODE_PORT, count=10, in_process=True)
        # node-2's own server answered, and saw the client's own address: no DNAT, no SNAT.
        assert routed.replies == {f"node-2 {client}": 10}, routed.summary()
