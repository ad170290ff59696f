"""The end-to-end cluster: a lab plus nftproxy's rules on every node, applied by the same
code the daemon uses. Each test describes its Services; applying them replaces what the
previous test left."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nftproxy import applying
from nftproxy.config import NodeConfig, node_config
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.lab import Lab, Pod
from nftproxy.model import (
    Endpoint,
    EndpointSlice,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    SlicePort,
)
from nftproxy.proxier import Proxier
from nftproxy.ruleset.compile import compile_all
from nftproxy.ruleset.desired import DesiredState

ZONES = {"node-1": "zone-a", "node-2": "zone-b"}
HTTP = 8080  # every pod's echo server: TCP and UDP
ECHO = 9090  # held connections that echo lines back


@dataclass
class Cluster:
    lab: Lab
    backends: dict[str, LibNftables] = field(default_factory=dict)

    def pod(self, name: str) -> Pod:
        return self.lab.topology.pod(name)

    def node_ip(self, node: str, family: int = 4) -> str:
        n = self.lab.topology.node(node)
        return n.ip4 if family == 4 else n.ip6

    @property
    def ext_ip(self) -> str:
        return self.lab.topology.ext.ip4

    def config(self, node: str, **options: Any) -> NodeConfig:
        """The node's configuration; `options` are more node_config arguments."""
        n = self.lab.topology.node(node)
        return node_config(
            node_name=n.name,
            zone=ZONES[n.name],
            node_ips=list(n.ips),
            cluster_cidrs=list(self.lab.topology.cluster_cidrs),
            **options,
        )

    def apply(
        self, services: Iterable[Service], slices: Iterable[EndpointSlice], **options: Any
    ) -> None:
        """Program every node; `options` are node_config arguments (masquerade_all...)."""
        services = {s.id: s for s in services}
        slices = list(slices)
        for node in self.lab.topology.nodes:
            cfg = self.config(node.name, **options)

            def build(names, cfg=cfg):
                desired = DesiredState(cfg, names, track_changes=False)
                for sid, frag in compile_all(services, slices, cfg, names).items():
                    desired.set_service(sid, frag)
                return desired.ruleset

            backend = self.backends[node.name]
            applying.run_plan(backend, applying.make_plan(build, applying.read_applied(backend)))

    def proxier(self, node: str) -> Proxier:
        return Proxier(self.backends[node], self.config(node), min_sync_period=0.0)


def endpoint(pod: Pod, *, family: int = 4, **kw: object) -> Endpoint:
    return Endpoint(pod.ip(family), node_name=pod.node, zone=ZONES[pod.node], **kw)  # type: ignore[arg-type]


def svc(
    name: str,
    vip: str = "",
    *,
    ports: Iterable[tuple[str, str, int, int | None]] = (("http", "tcp", 80, None),),
    vips: tuple[str, ...] = (),
    **kw: object,
) -> Service:
    cluster_ips = vips or (vip,)
    families = tuple(sorted({6 if ":" in ip else 4 for ip in cluster_ips}))
    return Service(
        ServiceName("default", name),
        tuple(ServicePort(n, Protocol(p), port, node_port) for n, p, port, node_port in ports),
        cluster_ips=cluster_ips,
        families=families,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def slice_of(
    service: str,
    endpoints: Iterable[Endpoint],
    *,
    ports: Iterable[tuple[str, str, int]] = (("http", "tcp", HTTP),),
    family: int = 4,
    name: str | None = None,
) -> EndpointSlice:
    return EndpointSlice(
        "default",
        name or f"{service}-{family}",
        service,
        family,  # type: ignore[arg-type]
        tuple(SlicePort(n, Protocol(p), port) for n, p, port in ports),
        tuple(endpoints),
    )
