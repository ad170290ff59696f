"""Two small manifest files (a TCP Service `shop/web` and a UDP one `kube-system/dns`) that
tests of the CLI and of the daemon write, break and fix, and how to look at the result."""

from __future__ import annotations

from pathlib import Path

from tests.support.kernel import nft_in

WEB = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [ADDRESS]}]
"""
DNS = """apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.53, ports: [{name: dns, port: PORT, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: [10.244.1.53]}]
"""


def web(address: str = "10.244.1.5") -> str:
    return WEB.replace("ADDRESS", address)


def dns(port: int | str = 53) -> str:
    return DNS.replace("PORT", str(port))


def two_files(tmp_path: Path, *, web_ip: str = "10.244.1.5", dns_port: int | str = 53) -> Path:
    """`manifests/` with web.yaml and dns.yaml (written again if they exist)."""
    directory = tmp_path / "manifests"
    directory.mkdir(exist_ok=True)
    (directory / "web.yaml").write_text(web(web_ip))
    (directory / "dns.yaml").write_text(dns(dns_port))
    return directory


def frontends(netns: str) -> str:
    """The frontend map, or "" while there is none yet."""
    try:
        return nft_in(netns, "list", "map", "inet", "nftproxy", "g1-frontends4")
    except AssertionError:
        return ""
