"""Small builders for model objects, so tests read as cluster descriptions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

from nftproxy.config import NodeConfig, node_config
from nftproxy.explain import Explanation, Packet, explain
from nftproxy.model import (
    Endpoint,
    EndpointSlice,
    Family,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    SlicePort,
)
from nftproxy.ruleset.compile import Names, compile_all
from nftproxy.ruleset.desired import DesiredState, Ruleset

NODE = node_config(
    node_name="node-a",
    zone="zone-1",
    node_ips=["192.168.0.1", "fd00:192::1"],
    cluster_cidrs=["10.244.0.0/16", "fd00:244::/64"],
)
POD = "10.244.0.50"  # a client pod on node-a
OUTSIDE = "203.0.113.7"  # a client outside the cluster


def port(
    number: int = 80,
    *,
    name: str = "http",
    proto: str = "tcp",
    node_port: int | None = None,
) -> ServicePort:
    return ServicePort(name, Protocol(proto), number, node_port)


def service(
    name: str = "web",
    *,
    ns: str = "default",
    ports: Sequence[ServicePort] = (),
    cluster_ips: Sequence[str] = ("10.96.0.10",),
    families: Sequence[Family] | None = None,
    **kw: object,
) -> Service:
    fams = (
        tuple(families)
        if families
        else tuple(sorted({6 if ":" in i else 4 for i in cluster_ips})) or (4,)
    )
    return Service(
        ServiceName(ns, name),
        tuple(ports) or (port(),),
        cluster_ips=tuple(cluster_ips),
        families=fams,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def ep(ip: str, node: str = "node-a", **kw: object) -> Endpoint:
    return Endpoint(ip, node_name=node, **kw)  # type: ignore[arg-type]


def endpoints(
    svc_name: str,
    eps: Iterable[Endpoint],
    *,
    ns: str = "default",
    target: int = 8080,
    name: str = "http",
    proto: str = "tcp",
    slice_name: str | None = None,
    family: Family = 4,
) -> EndpointSlice:
    return EndpointSlice(
        ns,
        slice_name or f"{svc_name}-{family}",
        svc_name,
        family,
        (SlicePort(name, Protocol(proto), target),),
        tuple(eps),
    )


def build(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    node: NodeConfig = NODE,
    names: Names | None = None,
) -> Ruleset:
    names = names or Names()
    desired = DesiredState(node, names)
    for sid, frag in compile_all({s.id: s for s in services}, slices, node, names).items():
        desired.set_service(sid, frag)
    return desired.ruleset


def send(
    rs: Ruleset,
    dst: str,
    dport: int = 80,
    *,
    src: str = POD,
    proto: str = "tcp",
    from_node: bool = False,
    node: NodeConfig = NODE,
) -> Explanation:
    return explain(rs, node, Packet(src, dst, dport, proto, from_node=from_node))


def reached(result: Explanation) -> dict[str, Fraction]:
    """'ip:port' -> probability."""
    return {f"{b.ip}:{b.port}": p for b, p in result.endpoints().items()}
