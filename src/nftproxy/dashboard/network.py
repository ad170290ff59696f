"""The network of an app as nodes really program it: each of its Services compiled by
nftproxy's own compiler for every node and walked by `explain` (the same answer
`nftproxy explain` gives), so the page shows where a connection lands and with what chance,
whether it is masqueraded, and which nodes answer differently (traffic policies Local,
topology). Beside it, whether each node's proxy has synced since the Service last changed,
as its health endpoint tells.

Everything here but `node_sync` is pure: API objects in, views out."""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from nftproxy import explain
from nftproxy.config import ConfigError, NodeConfig, node_config
from nftproxy.kube.objects import (
    InvalidObject,
    RawEndpointSlice,
    RawService,
    Skip,
    from_builtins,
    to_service,
    to_slice,
)
from nftproxy.model import EndpointSlice, Service, ServiceName
from nftproxy.ruleset.compile import Names, compile_all
from nftproxy.ruleset.desired import DesiredState, Ruleset
from nftproxy.sources.manifests import ReadLimits, read_yaml_documents

__all__ = [
    "OUTSIDE_V4",
    "OUTSIDE_V6",
    "PREVIEW_LIMITS",
    "NodeHealth",
    "NodeInfo",
    "NodeSync",
    "Path",
    "ServiceChange",
    "ServiceNetwork",
    "Share",
    "last_change",
    "node_health",
    "node_infos",
    "parse_time",
    "preview",
    "service_networks",
    "sync_state",
]

# A client outside the cluster, from the documentation ranges: it matches no pod network.
OUTSIDE_V4 = "203.0.113.10"
OUTSIDE_V6 = "2001:db8::10"
PREVIEW_LIMITS = ReadLimits(max_file_bytes=32 << 20, max_document_chars=32 << 20, max_depth=64)
MAX_NODES = 200  # nodes compiled for; beyond, the first by name
_HEALTH_CHECKS_AT_ONCE = 16
_HEALTH_TIMEOUT = 1.0
_CHANGE_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What compiling for a node needs of its Node object."""

    name: str
    addresses: tuple[str, ...] = ()  # InternalIPs, then ExternalIPs
    zone: str = ""
    pod_cidrs: tuple[str, ...] = ()
    internal: tuple[str, ...] = ()  # the InternalIPs alone


@dataclass(frozen=True, slots=True)
class Share:
    """Where a connection ends and with what chance."""

    verdict: str  # dnat, reject, drop, accept
    endpoint: str  # "10.0.0.5:8080", or "" when refused or dropped
    probability: Fraction
    masquerade: bool

    @property
    def percent(self) -> str:
        return f"{float(self.probability):.1%}"


@dataclass(frozen=True, slots=True)
class Path:
    """One way into a Service (its ClusterIP, a NodePort, an external address) and where
    it leads, the same on the nodes named."""

    entry: str  # "ClusterIP 10.96.0.12:80/TCP"
    source: str  # who sends it: "a pod on the node", "a client outside the cluster"
    nodes: tuple[str, ...]
    shares: tuple[Share, ...]


@dataclass(frozen=True, slots=True)
class ServiceNetwork:
    namespace: str
    name: str
    kind: str  # ClusterIP, NodePort, LoadBalancer...
    policies: tuple[str, ...]
    endpoints: int  # addresses its EndpointSlices list
    paths: tuple[Path, ...]
    changed: datetime | None  # the last change of it or its EndpointSlices
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeHealth:
    node: str
    healthy: bool | None  # None: no answer
    last_synced: datetime | None
    pending_since: datetime | None
    message: str


@dataclass(frozen=True, slots=True)
class NodeSync:
    node: str
    synced: bool | None  # None: not known (no answer)
    last_synced: datetime | None
    message: str
    pending_since: datetime | None = field(default=None)


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def last_change(objects: Iterable[Mapping[str, Any]]) -> datetime | None:
    """The latest time any of the objects was written, as the API server recorded it."""
    times: list[datetime] = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        candidates = [
            meta.get("creationTimestamp"),
            (meta.get("annotations") or {}).get(_CHANGE_ANNOTATION),
        ]
        candidates += [
            m.get("time") for m in meta.get("managedFields") or [] if isinstance(m, dict)
        ]
        times += [t for t in map(parse_time, candidates) if t is not None]
    return max(times, default=None)


def node_infos(nodes: Iterable[Mapping[str, Any]]) -> list[NodeInfo]:
    """Node objects (API JSON) as the compiler needs them, sorted by name."""
    out = []
    for node in nodes:
        meta, spec = node.get("metadata") or {}, node.get("spec") or {}
        addresses = (node.get("status") or {}).get("addresses") or []
        ips = [
            str(a.get("address"))
            for kind in ("InternalIP", "ExternalIP")
            for a in addresses
            if isinstance(a, dict) and a.get("type") == kind and _is_ip(a.get("address"))
        ]
        internal = [
            str(a.get("address"))
            for a in addresses
            if isinstance(a, dict) and a.get("type") == "InternalIP" and _is_ip(a.get("address"))
        ]
        labels = meta.get("labels") or {}
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        out.append(
            NodeInfo(
                name=str(meta.get("name", "")),
                addresses=tuple(dict.fromkeys(ips)),
                zone=str(labels.get("topology.kubernetes.io/zone", "")),
                pod_cidrs=tuple(str(c) for c in cidrs),
                internal=tuple(dict.fromkeys(internal)),
            )
        )
    return sorted(out, key=lambda n: n.name)[:MAX_NODES]


def _is_ip(text: object) -> bool:
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True


def _config(node: NodeInfo, cluster_cidrs: Sequence[str]) -> NodeConfig:
    try:
        return node_config(
            node_name=node.name,
            zone=node.zone,
            node_ips=node.addresses,
            cluster_cidrs=cluster_cidrs,
        )
    except ConfigError:
        return node_config(node_name=node.name, zone=node.zone)


def _pod_source(node: NodeInfo, config: NodeConfig, family: int) -> str | None:
    """An address a pod on this node could have: in its pod range, else in the cluster's."""
    for cidr in [*node.pod_cidrs, *config.cluster_cidrs]:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if net.version == family and net.num_addresses > 2:
            return str(net.network_address + 2)
    return None


def _ruleset(
    services: Mapping[ServiceName, Service], slices: Sequence[EndpointSlice], config: NodeConfig
) -> Ruleset:
    desired = DesiredState(config, Names(), track_changes=False)
    for sid, fragment in compile_all(services, slices, config, Names()).items():
        desired.set_service(sid, fragment)
    return desired.ruleset


def _shares(result: explain.Explanation) -> tuple[Share, ...]:
    merged: dict[tuple[str, str, bool], Fraction] = {}
    for b in result.branches:
        target = ""
        if b.backend is not None:
            host = f"[{b.backend.ip}]" if ":" in b.backend.ip else b.backend.ip
            target = f"{host}:{b.backend.port}"
        key = (b.verdict, target, b.masquerade)
        merged[key] = merged.get(key, Fraction(0)) + b.probability
    shares = [Share(v, t, p, m) for (v, t, m), p in merged.items()]
    return tuple(sorted(shares, key=lambda s: (-s.probability, s.endpoint)))


def _entries(
    service: Service, node: NodeInfo, config: NodeConfig
) -> list[tuple[str, str, explain.Packet]]:
    """(entry, who sends, packet) for each way into the Service on this node."""
    out = []
    for port in service.ports:
        proto = port.protocol.value
        for ip in service.cluster_ips:
            family = ipaddress.ip_address(ip).version
            src = _pod_source(node, config, family)
            who = "a pod on the node" if src else "a client outside the pod network"
            host = f"[{ip}]" if family == 6 else ip
            packet = explain.Packet(
                src or (OUTSIDE_V4 if family == 4 else OUTSIDE_V6), ip, port.port, proto
            )
            out.append((f"ClusterIP {host}:{port.port}/{proto.upper()}", who, packet))
        for ip in (*service.load_balancer_ips, *service.external_ips):
            family = ipaddress.ip_address(ip).version
            host = f"[{ip}]" if family == 6 else ip
            kind = "LoadBalancer" if ip in service.load_balancer_ips else "external IP"
            outside = OUTSIDE_V4 if family == 4 else OUTSIDE_V6
            packet = explain.Packet(outside, ip, port.port, proto)
            out.append(
                (
                    f"{kind} {host}:{port.port}/{proto.upper()}",
                    "a client outside the cluster",
                    packet,
                )
            )
        if port.node_port:
            for ip in node.addresses[:1]:
                family = ipaddress.ip_address(ip).version
                outside = OUTSIDE_V4 if family == 4 else OUTSIDE_V6
                packet = explain.Packet(outside, ip, port.node_port, proto)
                out.append(
                    (
                        f"NodePort {port.node_port}/{proto.upper()}",
                        "a client outside the cluster",
                        packet,
                    )
                )
    return out


def _kind(raw: Mapping[str, Any]) -> str:
    return str((raw.get("spec") or {}).get("type") or "ClusterIP")


def _policies(raw: Mapping[str, Any]) -> tuple[str, ...]:
    spec = raw.get("spec") or {}
    out = []
    # Only what differs from the default (Cluster) changes where traffic goes.
    if spec.get("externalTrafficPolicy") == "Local":
        out.append("external traffic: Local")
    if spec.get("internalTrafficPolicy") == "Local":
        out.append("internal traffic: Local")
    if spec.get("sessionAffinity") == "ClientIP":
        timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
            "timeoutSeconds", 10800
        )
        out.append(f"session affinity: client IP, {timeout} s")
    return tuple(out)


def service_networks(
    services: Sequence[Mapping[str, Any]],
    slices: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo],
    cluster_cidrs: Sequence[str] = (),
    unknown_endpoints: Mapping[tuple[str, str], str] | None = None,
) -> list[ServiceNetwork]:
    """For each Service (API JSON), where each way into it leads on every node, computed
    from these Services and EndpointSlices by the proxy's compiler and `explain`. Nodes that
    answer alike are named together; with no Node known, one node without addresses
    stands for all (NodePorts are then not walked)."""
    models: dict[ServiceName, Service] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    for raw in services:
        meta = raw.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        try:
            converted = to_service(from_builtins(raw, RawService))
        except InvalidObject as exc:
            problems.setdefault(key, []).append(str(exc))
            continue
        if isinstance(converted, Skip):
            problems.setdefault(key, []).append(f"not proxied: {converted.reason}")
            continue
        models[converted.id] = converted
    models_slices: list[EndpointSlice] = []
    endpoint_count: dict[tuple[str, str], int] = {}
    for raw in slices:
        try:
            converted_slice = to_slice(from_builtins(raw, RawEndpointSlice))
        except InvalidObject as exc:
            problems.setdefault(_owner(raw), []).append(str(exc))
            continue
        if isinstance(converted_slice, EndpointSlice):
            models_slices.append(converted_slice)
            owner = (converted_slice.namespace, converted_slice.service_name)
            endpoint_count[owner] = endpoint_count.get(owner, 0) + len(converted_slice.addresses)
    every = list(nodes) or [NodeInfo(name="")]
    # (service, entry, who, shares) -> nodes
    answers: dict[ServiceName, dict[tuple[str, str, tuple[Share, ...]], list[str]]] = {}
    for node in every:
        config = _config(node, cluster_cidrs)
        ruleset = _ruleset(models, models_slices, config)
        for sid, service in models.items():
            for entry, who, packet in _entries(service, node, config):
                shares = _shares(explain.explain(ruleset, config, packet))
                answers.setdefault(sid, {}).setdefault((entry, who, shares), []).append(node.name)
    out = []
    for raw in services:
        meta = raw.get("metadata") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        sid = ServiceName(ns, name)
        owned = [s for s in slices if _owner(s) == (ns, name)]
        blind = (unknown_endpoints or {}).get((ns, name))
        if blind is not None:
            out.append(
                ServiceNetwork(
                    namespace=ns,
                    name=name,
                    kind=_kind(raw),
                    policies=_policies(raw),
                    endpoints=0,
                    paths=(),
                    changed=last_change([raw]),
                    problems=(
                        "its EndpointSlices could not be read with your rights, so where "
                        f"connections go is not shown ({blind})",
                        *problems.get((ns, name), ()),
                    ),
                )
            )
            continue
        paths = tuple(
            Path(entry, who, tuple(n for n in names if n), shares)
            for (entry, who, shares), names in sorted(
                answers.get(sid, {}).items(), key=lambda kv: kv[0][0]
            )
        )
        out.append(
            ServiceNetwork(
                namespace=ns,
                name=name,
                kind=_kind(raw),
                policies=_policies(raw),
                endpoints=endpoint_count.get((ns, name), 0),
                paths=paths,
                changed=last_change([raw, *owned]),
                problems=tuple(problems.get((ns, name), ())),
            )
        )
    return out


def _owner(raw: Mapping[str, Any]) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    labels = meta.get("labels") or {}
    return str(meta.get("namespace", "")), str(labels.get("kubernetes.io/service-name", ""))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a node's answer is its own: a redirect elsewhere is an error


# Node addresses are what each node's kubelet reports: the health check follows no
# redirect and no proxy from the environment.
_HEALTH_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def node_health(
    nodes: Sequence[NodeInfo], url_template: str, *, timeout: float = _HEALTH_TIMEOUT
) -> list[NodeHealth]:
    """Each node's proxy health endpoint (`url_template` with {node} and {address}, its
    first InternalIP), asked at once: healthy or not, and when its rules last took in
    every change."""

    def ask(node: NodeInfo) -> NodeHealth:
        if not node.internal and "{address}" in url_template:
            return NodeHealth(node.name, None, None, None, "the node has no InternalIP")
        address = node.internal[0] if node.internal else ""
        host = f"[{address}]" if ":" in address else address
        url = url_template.format(node=node.name, address=host)
        try:
            with _HEALTH_OPENER.open(url, timeout=timeout) as answer:
                body = json.loads(answer.read(64 << 10))
                healthy = True
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read(64 << 10))
            except ValueError:
                body = {}
            healthy = False
        except (OSError, ValueError) as exc:
            return NodeHealth(node.name, None, None, None, f"no answer: {exc}")
        body = body if isinstance(body, dict) else {}
        return NodeHealth(
            node.name,
            healthy,
            parse_time(body.get("lastSynced")),
            parse_time(body.get("pendingSince")),
            "healthy" if healthy else "unhealthy",
        )

    if not nodes:
        return []
    with ThreadPoolExecutor(_HEALTH_CHECKS_AT_ONCE, thread_name_prefix="health") as pool:
        return list(pool.map(ask, nodes))


def sync_state(health: NodeHealth, changed: datetime | None) -> NodeSync:
    """Whether a node's proxy has programmed a change made at `changed`: its last complete
    sync is no older than the change. A proxy that does not say when it synced (kube-proxy)
    is only healthy or not."""
    if health.healthy is None:
        return NodeSync(health.node, None, None, health.message)
    if health.last_synced is None:
        return NodeSync(
            health.node, None, None, f"{health.message}; it does not say when it synced"
        )
    synced = changed is None or health.last_synced >= changed
    message = "synced since the last change" if synced else "not synced since the last change"
    if not health.healthy:
        message += "; unhealthy"
    return NodeSync(health.node, synced, health.last_synced, message, health.pending_since)


# --- what an install or upgrade would change ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceChange:
    """One Service of a release, as an install or upgrade would change it."""

    namespace: str
    name: str
    change: str  # new, changed, removed, unchanged
    notes: tuple[str, ...]  # what changes on the nodes, in words
    gained: tuple[str, ...] = ()  # endpoint addresses it would gain
    lost: tuple[str, ...] = ()  # ... and lose
    conflicts: tuple[str, ...] = ()


def _services_in(
    documents: Sequence[object], namespace: str
) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in documents:
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for obj in items if isinstance(items, list) else []:
            if not isinstance(obj, dict) or obj.get("kind") != "Service":
                continue
            meta = _spec({"spec": obj.get("metadata")})
            name = meta.get("name")
            if isinstance(name, str) and name:
                ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
                found[(ns or namespace, name)] = obj
    return found


def _key(obj: Mapping[str, Any], namespace: str) -> tuple[str, str]:
    meta = _spec({"spec": obj.get("metadata")})
    return str(meta.get("namespace") or namespace), str(meta.get("name", ""))


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


_DIGITS = re.compile(r"[0-9]{1,5}")  # str.isdigit() takes "²", which int() does not


def _number(value: object) -> int:
    """A port number as rendered manifests hold it; 0 for anything else (their values
    are the user's)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and _DIGITS.fullmatch(value) else 0


def _port_key(port: Mapping[str, Any]) -> tuple[str, int]:
    return (str(port.get("protocol") or "TCP").upper(), _number(port.get("port")))


def _ports_of(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    ports = spec.get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def _addresses_of(spec: Mapping[str, Any]) -> set[str]:
    ips = spec.get("externalIPs")
    return {ip for ip in ips if isinstance(ip, str)} if isinstance(ips, list) else set()


def _matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _ready_pod_ips(pods: Iterable[Mapping[str, Any]], selector: Mapping[str, Any]) -> set[str]:
    """The addresses of the ready Pods a selector picks: the endpoints its EndpointSlice
    controller would list."""
    out: set[str] = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if not _matches(selector, meta.get("labels") or {}) or meta.get("deletionTimestamp"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
            if isinstance(c, dict)
        )
        if ready:
            out.update(
                str(ip.get("ip")) for ip in status.get("podIPs") or [] if isinstance(ip, dict)
            )
            if status.get("podIP"):
                out.add(str(status["podIP"]))
    return out


def _slice_ips(slices: Iterable[Mapping[str, Any]], namespace: str, name: str) -> set[str]:
    out: set[str] = set()
    for s in slices:
        if _owner(s) != (namespace, name):
            continue
        for endpoint in s.get("endpoints") or []:
            if isinstance(endpoint, dict) and (endpoint.get("conditions") or {}).get("ready", True):
                out.update(str(a) for a in endpoint.get("addresses") or [])
    return out


def _describe(spec: Mapping[str, Any]) -> list[str]:
    kind = str(spec.get("type") or "ClusterIP")
    out = []
    ports = ", ".join(f"{p}/{proto}" for proto, p in map(_port_key, _ports_of(spec)))
    if spec.get("clusterIP") == "None":
        out.append(f"headless: no ClusterIP, no proxy rules (ports {ports})")
        return out
    ip = spec.get("clusterIP")
    out.append(f"ClusterIP {ip}" if ip else "a ClusterIP the cluster assigns at install")
    out.append(f"ports {ports}" if ports else "no ports")
    if kind in ("NodePort", "LoadBalancer"):
        for port in _ports_of(spec):
            wanted = port.get("nodePort")
            proto, number = _port_key(port)
            out.append(
                f"NodePort {wanted}/{proto} on every node"
                if wanted
                else f"a NodePort for {number}/{proto}, assigned at install, on every node"
            )
    if kind == "LoadBalancer":
        out.append("a LoadBalancer address, from the cluster's load balancer")
    for ip in sorted(_addresses_of(spec)):
        out.append(f"external IP {ip}: every node answers on it")
    return out


def _compared(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    out = []
    if (before.get("type") or "ClusterIP") != (after.get("type") or "ClusterIP"):
        out.append(
            f"type {before.get('type') or 'ClusterIP'} -> {after.get('type') or 'ClusterIP'}"
        )
    old_ports = {_port_key(p): p for p in _ports_of(before)}
    new_ports = {_port_key(p): p for p in _ports_of(after)}
    for key in sorted(new_ports.keys() - old_ports.keys()):
        out.append(f"port {key[1]}/{key[0]} opens")
    for key in sorted(old_ports.keys() - new_ports.keys()):
        out.append(f"port {key[1]}/{key[0]} closes")
    for key in sorted(old_ports.keys() & new_ports.keys()):
        a, b = old_ports[key], new_ports[key]
        if b.get("nodePort") and a.get("nodePort") != b.get("nodePort"):
            out.append(f"port {key[1]}/{key[0]}: NodePort {a.get('nodePort')} -> {b['nodePort']}")
        if a.get("targetPort") != b.get("targetPort"):
            target = f"{a.get('targetPort')} -> {b.get('targetPort')}"
            out.append(f"port {key[1]}/{key[0]}: target port {target}")
    if (before.get("selector") or {}) != (after.get("selector") or {}):
        out.append("its selector changes: it picks other Pods")
    for what in ("externalTrafficPolicy", "internalTrafficPolicy", "sessionAffinity"):
        if after.get(what) and before.get(what) != after.get(what):
            out.append(f"{what} {before.get(what) or 'default'} -> {after.get(what)}")
    for ip in sorted(_addresses_of(after) - _addresses_of(before)):
        out.append(f"external IP {ip} added: every node answers on it")
    for ip in sorted(_addresses_of(before) - _addresses_of(after)):
        out.append(f"external IP {ip} removed")
    return out


def _conflicts(
    key: tuple[str, str],
    spec: Mapping[str, Any],
    cluster: Mapping[tuple[str, str], Mapping[str, Any]],
    visible: Iterable[tuple[str, str]],
) -> list[str]:
    """What other Services already hold that this one asks for: a NodePort or ClusterIP
    (the API server refuses the install) or an external IP and port (the API server takes
    it; the proxies can send the traffic to one Service only). `cluster` is every Service,
    as the dashboard itself lists them: one is named only when it is in `visible`, those
    the user may see."""
    seen = set(visible)
    out = []
    wanted_ports = {
        (str(p.get("protocol") or "TCP").upper(), _number(p.get("nodePort")))
        for p in _ports_of(spec)
        if _number(p.get("nodePort"))
    }
    wanted_external = {(ip, *_port_key(p)) for ip in _addresses_of(spec) for p in _ports_of(spec)}
    wanted_ip = spec.get("clusterIP") if isinstance(spec.get("clusterIP"), str) else ""
    for other_key, other in sorted(cluster.items()):
        if other_key == key and key in seen:
            continue  # itself, as the user sees it (one they cannot see is another's)
        other_spec = _spec(other)
        who = f"{other_key[0]}/{other_key[1]}'s" if other_key in seen else "another Service's"
        for p in _ports_of(other_spec):
            taken = (str(p.get("protocol") or "TCP").upper(), _number(p.get("nodePort")))
            if taken in wanted_ports:
                out.append(f"NodePort {taken[1]}/{taken[0]} is {who}: the cluster will refuse it")
        if wanted_ip not in ("", "None") and wanted_ip == other_spec.get("clusterIP"):
            out.append(f"ClusterIP {wanted_ip} is {who}: the cluster will refuse it")
        for ip in sorted(_addresses_of(other_spec)):
            for p in _ports_of(other_spec):
                if (ip, *_port_key(p)) in wanted_external:
                    proto, port = _port_key(p)
                    out.append(
                        f"external IP {ip}:{port}/{proto} is also {who}: nodes send its "
                        "traffic to one of the two only"
                    )
    return out


def preview(
    rendered: str,
    deployed: str,
    namespace: str,
    visible: Sequence[Mapping[str, Any]],
    cluster_services: Sequence[Mapping[str, Any]],
    slices: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> tuple[list[ServiceChange], list[str]]:
    """What installing or upgrading to the `rendered` manifests (from `deployed`, "" for
    an install) changes on the nodes, Service by Service, against the Services the user
    sees (`visible`, read with their token), the namespace's EndpointSlices and Pods; and
    what of the manifests could not be read. `cluster_services`, every Service as the
    dashboard lists them, only tells what another Service already holds, without naming
    one the user may not see."""
    new_docs, errors = read_yaml_documents(rendered.encode(), PREVIEW_LIMITS)
    old_docs, _ = read_yaml_documents(deployed.encode(), PREVIEW_LIMITS)
    after = _services_in(new_docs, namespace)
    before = _services_in(old_docs, namespace)
    cluster = {_key(obj, ""): obj for obj in cluster_services}
    mine = {_key(obj, namespace): obj for obj in visible}
    out = []
    for key in sorted(after.keys() | before.keys()):
        ns, name = key
        new, old = _spec(after.get(key)), _spec(before.get(key))
        live = mine.get(key)
        if key not in after:
            freed = [f"ClusterIP {_spec(live).get('clusterIP')} freed"] if live else []
            freed += [
                f"NodePort {_number(p.get('nodePort'))}/{_port_key(p)[0]} freed"
                for p in _ports_of(_spec(live))
                if _number(p.get("nodePort"))
            ]
            lost = sorted(_slice_ips(slices, ns, name))
            out.append(
                ServiceChange(
                    ns, name, "removed", ("its rules go from every node", *freed), lost=tuple(lost)
                )
            )
            continue
        selector = new.get("selector") if isinstance(new.get("selector"), dict) else {}
        current = _slice_ips(slices, ns, name)
        # Endpoints follow the selector: the same one keeps them; another picks the ready
        # Pods it matches, as the EndpointSlice controller will.
        same = live is not None and (_spec(live).get("selector") or {}) == selector
        predicted = current if same or not selector else _ready_pod_ips(pods, selector)
        conflicts = tuple(_conflicts(key, new, cluster, mine))
        if key not in before and live is None:
            notes = _describe(new)
            if selector and not predicted:
                notes.append(
                    "no ready Pod matches its selector yet: connections are refused until one does"
                )
            out.append(
                ServiceChange(
                    ns, name, "new", tuple(notes), tuple(sorted(predicted)), (), conflicts
                )
            )
            continue
        notes = _compared(_spec(live) if live else old, new)
        gained, lost = sorted(predicted - current), sorted(current - predicted)
        change = "changed" if notes or gained or lost else "unchanged"
        out.append(
            ServiceChange(ns, name, change, tuple(notes), tuple(gained), tuple(lost), conflicts)
        )
    return out, list(errors)
