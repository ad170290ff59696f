"""Which endpoints this node sends a Service port's traffic to.

Pure functions that follow kube-proxy's rules (pkg/proxy/topology.go): ready endpoints first,
serving-terminating ones only when no ready one exists, zone/node hints when every ready
endpoint carries them, and node-local subsets for the Local traffic policies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from nftproxy.config import NodeConfig
from nftproxy.model import Destination, EndpointFacts, EndpointSlice, Family, ServicePort

__all__ = [
    "Selection",
    "select",
]


@dataclass(frozen=True, slots=True)
class Selection:
    """Endpoints for one Service port in one address family, as seen from this node."""

    # Used for traffic treated as cluster-wide (ClusterIP unless internalTrafficPolicy Local,
    # and external traffic under externalTrafficPolicy Cluster).
    cluster: tuple[Destination, ...]
    # This node's endpoints (for the Local policies).
    local: tuple[Destination, ...]
    # Whether any usable endpoint exists anywhere: decides reject (none) versus drop
    # (some, but none local) for a policy that finds nothing.
    any_usable: bool
    # Selected endpoints that may be on this node (named so, or with no node name): only a
    # pod here can reach itself through the Service, so only these need hairpin masquerade.
    maybe_here: tuple[str, ...] = ()


class _Candidate(NamedTuple):
    backend: Destination
    endpoint: EndpointFacts


def _slice_name(sl: EndpointSlice) -> str:
    return sl.name


def _candidates(
    port: ServicePort, slices: Iterable[EndpointSlice], family: Family
) -> list[_Candidate]:
    """Endpoints for `port`, de-duplicated by address: a ready copy beats a not-ready one,
    and between equals the slice first by name wins. Not the order slices arrived in: a
    running daemon and a restarted one must pick the same copy."""
    found: dict[tuple[str, int], _Candidate] = {}
    for sl in sorted(slices, key=_slice_name):
        if sl.family != family:
            continue
        target = next(
            (p.port for p in sl.ports if p.name == port.name and p.protocol == port.protocol),
            None,
        )
        if target is None:
            continue
        for ip, facts in sl.columns():
            key = (ip, target)
            seen = found.get(key)
            if seen is None or (facts.ready and not seen.endpoint.ready):
                found[key] = _Candidate(Destination(ip, target), facts)
    return [found[k] for k in sorted(found)]


def _topology_filter(ready: list[_Candidate], node: NodeConfig) -> list[_Candidate]:
    """Apply node, then zone hints, each only when every ready endpoint carries that kind of
    hint and at least one names this node (zone); otherwise hints are ignored, as kube-proxy."""
    if not ready:
        return ready
    if node.node_name and all(c.endpoint.node_hints for c in ready):
        on_node = [c for c in ready if node.node_name in (c.endpoint.node_hints or ())]
        if on_node:
            return on_node
    if not node.zone:
        return ready
    if any(c.endpoint.zone_hints is None or not c.endpoint.zone_hints for c in ready):
        return ready
    in_zone = [c for c in ready if node.zone in (c.endpoint.zone_hints or ())]
    return in_zone or ready


def _with_fallback(cands: list[_Candidate], usable: list[_Candidate]) -> tuple[Destination, ...]:
    if usable:
        return tuple(c.backend for c in usable)
    return tuple(c.backend for c in cands if c.endpoint.serving and c.endpoint.terminating)


def select(
    port: ServicePort,
    slices: Iterable[EndpointSlice],
    family: Family,
    node: NodeConfig,
) -> Selection:
    cands = _candidates(port, slices, family)
    me = node.node_name
    if all(
        c.endpoint.ready and c.endpoint.zone_hints is None and c.endpoint.node_hints is None
        for c in cands
    ):
        # The common case (every endpoint ready, no hints): everything is selected.
        return Selection(
            cluster=tuple(c.backend for c in cands),
            local=tuple(c.backend for c in cands if me and c.endpoint.node_name == me),
            any_usable=bool(cands),
            maybe_here=tuple(
                sorted({c.backend.ip for c in cands if c.endpoint.node_name in (None, "", me)})
            ),
        )
    ready = [c for c in cands if c.endpoint.ready]
    cluster = _with_fallback(cands, _topology_filter(ready, node))
    mine = [c for c in cands if me and c.endpoint.node_name == me]
    local = _with_fallback(mine, [c for c in mine if c.endpoint.ready])
    usable = bool(ready) or any(c.endpoint.serving and c.endpoint.terminating for c in cands)
    chosen = {*cluster, *local}
    here = sorted(
        {
            c.backend.ip
            for c in cands
            if c.backend in chosen and c.endpoint.node_name in (None, "", me)
        }
    )
    return Selection(cluster=cluster, local=local, any_usable=usable, maybe_here=tuple(here))
