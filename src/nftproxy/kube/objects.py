"""Raw Service/EndpointSlice API shapes and their validated conversion into `nftproxy.model`.

Manifest files and the API watcher both decode into the same lenient structs, then convert
once here, so every input path gets identical validation and identical error messages.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import msgspec

from nftproxy import addresses
from nftproxy.model import (
    EndpointFacts,
    EndpointSlice,
    Family,
    Protocol,
    Service,
    ServiceCIDR,
    ServiceName,
    ServicePort,
    SharedValues,
    SlicePort,
    endpoint_facts,
    itself,
)

__all__ = [
    "FAST_IPV6",
    "PROXY_NAME_LABEL",
    "SERVICE_NAME_LABEL",
    "InvalidObject",
    "RawEndpointSlice",
    "RawObjectMeta",
    "RawService",
    "RawServiceCIDR",
    "Skip",
    "canonical_ip",
    "decode_json",
    "from_builtins",
    "to_service",
    "to_service_cidr",
    "to_slice",
]

PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"

MAX_PORTS: Final = 1000
MAX_ENDPOINTS: Final = 1000
MAX_ADDRESSES: Final = 100
DEFAULT_AFFINITY_TIMEOUT: Final = 10800
MAX_AFFINITY_TIMEOUT: Final = 86400
# Error messages quote the values they reject; a huge "address" must not become a log line.
MAX_MESSAGE_CHARS: Final = 1000


# --- Raw API shapes -------------------------------------------------------------------------
#
# Every field is optional: the API server and hand-written manifests both omit fields, and Go
# serialises nil slices as `null`, so arrays accept None. Unknown fields are ignored by msgspec.
# Arrays decode to tuples and structs use gc=False: decoded trees never form reference cycles,
# and this keeps the cyclic collector from rescanning every endpoint object of a large load
# again and again.


class _Raw(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    pass


class RawObjectMeta(_Raw):
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resource_version: str = ""


class RawServicePort(_Raw):
    name: str = ""
    protocol: str = ""
    app_protocol: str | None = None
    port: int | None = None
    target_port: int | str | None = None
    node_port: int | None = None


class RawClientIPConfig(_Raw):
    timeout_seconds: int | None = None


class RawSessionAffinityConfig(_Raw):
    client_ip: RawClientIPConfig | None = msgspec.field(default=None, name="clientIP")


class RawServiceSpec(_Raw):
    type: str = ""
    cluster_ip: str = msgspec.field(default="", name="clusterIP")
    cluster_ips: tuple[str, ...] | None = msgspec.field(default=None, name="clusterIPs")
    ip_families: tuple[str, ...] | None = None
    ports: tuple[RawServicePort, ...] | None = None
    external_ips: tuple[str, ...] | None = msgspec.field(default=None, name="externalIPs")
    load_balancer_source_ranges: tuple[str, ...] | None = None
    external_traffic_policy: str = ""
    internal_traffic_policy: str | None = None
    session_affinity: str = ""
    session_affinity_config: RawSessionAffinityConfig | None = None
    health_check_node_port: int | None = None
    external_name: str = ""
    traffic_distribution: str | None = None


class RawLoadBalancerIngress(_Raw):
    ip: str = ""
    hostname: str = ""
    ip_mode: str | None = None


class RawLoadBalancerStatus(_Raw):
    ingress: tuple[RawLoadBalancerIngress, ...] | None = None


class RawServiceStatus(_Raw):
    load_balancer: RawLoadBalancerStatus | None = None


class RawServiceCIDRSpec(_Raw):
    cidrs: tuple[str, ...] | None = None


class RawServiceCIDR(_Raw):
    api_version: str = ""
    kind: str = ""
    metadata: RawObjectMeta | None = None
    spec: RawServiceCIDRSpec | None = None


class RawService(_Raw):
    api_version: str = ""
    kind: str = ""
    metadata: RawObjectMeta | None = None
    spec: RawServiceSpec | None = None
    status: RawServiceStatus | None = None


class RawEndpointPort(_Raw):
    name: str | None = None
    protocol: str | None = None
    port: int | None = None
    app_protocol: str | None = None


class RawEndpointConditions(_Raw):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class RawForZone(_Raw):
    name: str = ""


class RawForNode(_Raw):
    name: str = ""


class RawEndpointHints(_Raw):
    for_zones: tuple[RawForZone, ...] | None = None
    for_nodes: tuple[RawForNode, ...] | None = None


class RawEndpoint(_Raw):
    addresses: tuple[str, ...] | None = None
    conditions: RawEndpointConditions | None = None
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: RawEndpointHints | None = None


class RawEndpointSlice(_Raw):
    api_version: str = ""
    kind: str = ""
    metadata: RawObjectMeta | None = None
    address_type: str = ""
    endpoints: tuple[RawEndpoint, ...] | None = None
    ports: tuple[RawEndpointPort, ...] | None = None


# --- Results and errors ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skip:
    """A well-formed object that this proxy deliberately does not program."""

    reason: str


class InvalidObject(ValueError):
    """One object (or one input file) that cannot be used, with where and why on one line."""

    def __init__(
        self,
        kind: str,
        namespace: str,
        name: str,
        field: str,
        message: str,
        *,
        source: str | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message):,} characters)"
        # Parser messages (YAML marks) span lines; logs and CLI output want one line each.
        message = " ".join(message.split())
        super().__init__(message)
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.field = field
        self.message = message
        self.source = source

    def __str__(self) -> str:
        parts = [self.source] if self.source else []
        if self.kind not in ("file", "document"):
            name = self.name or "<unnamed>"
            parts.append(
                f"{self.kind} {self.namespace}/{name}" if self.namespace else f"{self.kind} {name}"
            )
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Callable[..., InvalidObject], tuple[Any, ...]]:
        # The keyword-only source would be lost by the default exception pickling.
        return _rebuild_invalid, (
            self.kind,
            self.namespace,
            self.name,
            self.field,
            self.message,
            self.source,
        )


def _rebuild_invalid(
    kind: str, namespace: str, name: str, field: str, message: str, source: str | None
) -> InvalidObject:
    return InvalidObject(kind, namespace, name, field, message, source=source)


class _Bad(Exception):
    """Raised by field validators; the caller adds the object's identity."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message


# --- Decoding entry points ------------------------------------------------------------------

_T = TypeVar("_T", RawService, RawEndpointSlice, RawServiceCIDR)
_KIND_OF: Final[dict[type[Any], str]] = {
    RawService: "Service",
    RawEndpointSlice: "EndpointSlice",
    RawServiceCIDR: "ServiceCIDR",
}
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?) - at `\$\.?(?P<path>.*)`$", re.DOTALL)


def from_builtins(data: object, cls: type[_T]) -> _T:
    """Decode an already-parsed dict (YAML, JSON, informer cache) into a raw struct."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise _decode_error(cls, exc, data) from None


def decode_json(data: bytes | str, cls: type[_T]) -> _T:
    """Decode one API object from JSON text without building intermediate dicts."""
    try:
        return msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        try:
            loose: object = msgspec.json.decode(data)
        except msgspec.DecodeError:
            loose = None
        raise _decode_error(cls, exc, loose) from None
    except msgspec.DecodeError as exc:
        raise InvalidObject(_KIND_OF[cls], "", "", "", str(exc)) from None


def _decode_error(cls: type[Any], exc: msgspec.ValidationError, data: object) -> InvalidObject:
    namespace, name = _loose_identity(data)
    if cls is RawServiceCIDR:
        namespace = ""  # cluster-scoped
    text = str(exc)
    match = _MSGSPEC_PATH.match(text)
    field, message = (match["path"], match["message"]) if match else ("", text)
    # Every field is nullable for leniency; "`int | null`" in messages would only confuse.
    message = message.replace(" | null`", "`")
    return InvalidObject(_KIND_OF[cls], namespace, name, field, message)


def _loose_identity(data: object) -> tuple[str, str]:
    """Best-effort namespace/name for naming an object that failed to decode."""
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        return "default", ""
    name, namespace = meta.get("name"), meta.get("namespace")
    return (
        namespace if isinstance(namespace, str) and namespace else "default",
        name if isinstance(name, str) else "",
    )


def _identity(kind: str, meta: RawObjectMeta | None) -> tuple[str, str]:
    # kubectl applies "default" to namespace-less manifests; do the same.
    namespace = _shared_name((meta.namespace if meta else "") or "default") or "default"
    name = meta.name if meta else ""
    if not name:
        raise InvalidObject(kind, namespace, "", "metadata.name", "is required")
    return namespace, name


# --- Small validators -----------------------------------------------------------------------

_PROTOCOLS: Final = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_FAMILY_NAMES: Final[dict[int, str]] = {4: "IPv4", 6: "IPv6"}
_FAMILIES_BY_NAME: Final[dict[str, Family]] = {"IPv4": 4, "IPv6": 6}
_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"


def _absurd(field: str, items: Sequence[object] | None, limit: int) -> None:
    if items is not None and len(items) > limit:
        raise _Bad(field, f"absurd size: {len(items)} entries (limit {limit})")


def _port_number(value: int, field: str) -> int:
    if not 1 <= value <= 65535:
        raise _Bad(field, f"{value} is out of range 1-65535")
    return value


def _protocol(value: str | None, field: str) -> Protocol:
    if not value:
        return Protocol.TCP
    try:
        return _PROTOCOLS[value]
    except KeyError:
        raise _Bad(field, f'"{value}" is not a supported protocol (TCP, UDP or SCTP)') from None


def _choice(value: str | None, field: str, allowed: tuple[str, ...]) -> str:
    if value and value not in allowed:
        raise _Bad(field, f'"{value}" is not one of {", ".join(allowed)}')
    return value or allowed[0]


def _ntop_matches_ipaddress() -> bool:
    """Whether libc's inet_ntop spells IPv6 exactly like `ipaddress` (glibc and BSD do)."""
    probes = (
        "1:0:2:3:4:5:6:7",
        "1:0:0:2:0:0:3:4",
        "1:0:0:2:0:0:0:4",
        "fd00::1:0:0:1",
        "::",
        "::1",
        "1::",
        "0:0:1::",
        "2001:db8::ab:cdef",
    )
    try:
        return all(
            socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, p))
            == str(ipaddress.IPv6Address(p))
            for p in probes
        )
    except (OSError, ValueError, AttributeError):
        return False


FAST_IPV6: Final = _ntop_matches_ipaddress()


def canonical_ip(text: str) -> tuple[str, Family]:
    """Return (`str(addresses.ip_address(text))`, family), rejecting IPv4-mapped and scoped.
    Leading zeros are accepted as Kubernetes accepts them: `10.180.00.001` is 10.180.0.1.

    `ipaddress` is slow enough per address to dominate the load of a large cluster.
    Text that inet_pton/inet_ntop round-trips unchanged is already canonical, so it skips
    `ipaddress`; everything else (errors, odd spellings, leading zeros, which inet_pton
    rejects) takes the exact slow path.
    """
    try:
        if ":" not in text:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text:
                return text, 4
        elif FAST_IPV6 and "." not in text:
            packed = socket.inet_pton(socket.AF_INET6, text)
            if packed[:12] != _MAPPED_PREFIX and socket.inet_ntop(socket.AF_INET6, packed) == text:
                return text, 6
    except (OSError, ValueError):
        pass
    return _canonical_ip_slow(text)


def _canonical_ip_slow(text: str) -> tuple[str, Family]:
    try:
        addr = addresses.ip_address(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a valid IP address') from None
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr), 4
    if addr.ipv4_mapped is not None:
        raise ValueError(f'"{text}" is an IPv4-mapped IPv6 address; use the IPv4 address')
    if addr.scope_id is not None:
        raise ValueError(f'"{text}" has a zone index, which Services cannot use')
    return str(addr), 6


def _ip(text: str, field: str) -> tuple[str, Family]:
    """canonical_ip for Service fields, where building `field` eagerly is affordable."""
    try:
        return canonical_ip(text)
    except ValueError as exc:
        raise _Bad(field, str(exc)) from None


def _families_text(families: Sequence[int]) -> str:
    return " and ".join(_FAMILY_NAMES[f] for f in families)


# --- Service --------------------------------------------------------------------------------

_SERVICE_TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_NODE_PORT_TYPES: Final = frozenset({"NodePort", "LoadBalancer"})


def to_service(raw: RawService, *, service_proxy_name: str | None = None) -> Service | Skip:
    """Validate one Service; raise InvalidObject naming the first bad field."""
    namespace, name = _identity("Service", raw.metadata)
    try:
        return _service(raw, ServiceName(namespace, name), service_proxy_name)
    except _Bad as exc:
        raise InvalidObject("Service", namespace, name, exc.field, exc.message) from None


def _service(raw: RawService, sid: ServiceName, proxy_name: str | None) -> Service | Skip:
    labels = raw.metadata.labels if raw.metadata else None
    owner = labels.get(PROXY_NAME_LABEL) if labels else None
    # Checked before any validation: such Services belong to another proxy, whose rules on
    # what is valid are not ours to enforce.
    if owner is not None and owner != proxy_name:
        return Skip(f'label {PROXY_NAME_LABEL}="{owner}" assigns it to another proxy')
    spec = raw.spec or RawServiceSpec()
    kind = _choice(spec.type, "spec.type", _SERVICE_TYPES)
    if kind == "ExternalName":
        return Skip("ExternalName Service is answered by DNS, not proxied")
    if spec.cluster_ip == "None" or (spec.cluster_ips and spec.cluster_ips[0] == "None"):
        return Skip("headless Service has no virtual IP")

    cluster_ips, families = _cluster_ips(spec)
    external_ips = _addresses(spec.external_ips, "spec.externalIPs", families)
    externally_reachable = kind in _NODE_PORT_TYPES or (kind == "ClusterIP" and bool(external_ips))
    external_policy = _choice(
        spec.external_traffic_policy, "spec.externalTrafficPolicy", ("Cluster", "Local")
    )
    # kube-proxy ignores externalTrafficPolicy on Services nothing external can reach.
    external_local = externally_reachable and external_policy == "Local"
    internal_local = (
        _choice(spec.internal_traffic_policy, "spec.internalTrafficPolicy", ("Cluster", "Local"))
        == "Local"
    )
    health = None
    if kind == "LoadBalancer" and external_local and spec.health_check_node_port:
        health = _port_number(spec.health_check_node_port, "spec.healthCheckNodePort")
    return Service(
        id=sid,
        ports=_service_ports(spec.ports, keep_node_ports=kind in _NODE_PORT_TYPES),
        cluster_ips=cluster_ips,
        external_ips=external_ips,
        load_balancer_ips=_ingress_ips(raw.status, families),
        load_balancer_source_ranges=_source_ranges(spec.load_balancer_source_ranges),
        external_policy_local=external_local,
        internal_policy_local=internal_local,
        affinity_timeout=_affinity_timeout(spec),
        health_check_node_port=health,
        families=families,
    )


def _cluster_ips(spec: RawServiceSpec) -> tuple[tuple[str, ...], tuple[Family, ...]]:
    """Cluster IPs and the Service's families; families in primary-first order."""
    if spec.cluster_ips:
        texts, fields = spec.cluster_ips, [f"spec.clusterIPs[{i}]" for i in range(2)]
    elif spec.cluster_ip:
        texts, fields = (spec.cluster_ip,), ["spec.clusterIP"]
    else:
        return (), _ip_families(spec.ip_families)
    if len(texts) > 2:
        raise _Bad("spec.clusterIPs", f"has {len(texts)} addresses; at most one per family")
    ips: list[str] = []
    families: list[Family] = []
    for text, field in zip(texts, fields, strict=False):
        ip, family = _ip(text, field)
        if family in families:
            raise _Bad(field, f"second {_FAMILY_NAMES[family]} cluster IP; need one per family")
        ips.append(ip)
        families.append(family)
    if spec.cluster_ips and spec.cluster_ip and _ip(spec.cluster_ip, "spec.clusterIP")[0] != ips[0]:
        raise _Bad("spec.clusterIP", f'"{spec.cluster_ip}" differs from spec.clusterIPs[0]')
    return tuple(ips), _shared(tuple(families))


def _ip_families(names: tuple[str, ...] | None) -> tuple[Family, ...]:
    if not names:
        return (4,)
    families: list[Family] = []
    for i, name in enumerate(names):
        family = _FAMILIES_BY_NAME.get(name)
        if family is None:
            raise _Bad(f"spec.ipFamilies[{i}]", f'"{name}" is not IPv4 or IPv6')
        if family in families:
            raise _Bad(f"spec.ipFamilies[{i}]", f'"{name}" is listed twice')
        families.append(family)
    return _shared(tuple(families))


def _addresses(
    texts: tuple[str, ...] | None, field: str, families: tuple[Family, ...]
) -> tuple[str, ...]:
    if not texts:
        return ()
    _absurd(field, texts, MAX_ADDRESSES)
    # A dict keeps first-seen order while dropping respellings of one address.
    out: dict[str, None] = {}
    for i, text in enumerate(texts):
        out[_in_families(text, f"{field}[{i}]", families)] = None
    return tuple(out)


def _in_families(text: str, field: str, families: tuple[Family, ...]) -> str:
    ip, family = _ip(text, field)
    if family not in families:
        raise _Bad(
            field,
            f'"{text}" is {_FAMILY_NAMES[family]} but the Service is {_families_text(families)}',
        )
    return ip


def _ingress_ips(status: RawServiceStatus | None, families: tuple[Family, ...]) -> tuple[str, ...]:
    ingress = status.load_balancer.ingress if status and status.load_balancer else None
    if not ingress:
        return ()
    field = "status.loadBalancer.ingress"
    _absurd(field, ingress, MAX_ADDRESSES)
    out: dict[str, None] = {}
    for i, entry in enumerate(ingress):
        # kube-proxy programs only VIP-mode IPs: Proxy mode means the load balancer
        # terminates traffic itself, and hostname-only entries have nothing to match.
        if not entry.ip or entry.ip_mode not in (None, "VIP"):
            continue
        out[_in_families(entry.ip, f"{field}[{i}].ip", families)] = None
    return tuple(out)


def _source_ranges(texts: tuple[str, ...] | None) -> tuple[str, ...]:
    if not texts:
        return ()
    field = "spec.loadBalancerSourceRanges"
    _absurd(field, texts, MAX_ADDRESSES)
    return _cidrs(field, texts)


def _cidrs(field: str, texts: Sequence[str]) -> tuple[str, ...]:
    """Canonical CIDRs, once each, read as Kubernetes reads them (padding, leading zeros)."""
    out: dict[str, None] = {}
    for i, text in enumerate(texts):
        try:
            network = addresses.ip_network(text.strip(), strict=False)
        except ValueError:
            raise _Bad(f"{field}[{i}]", f'"{text}" is not a valid CIDR') from None
        out[str(network)] = None
    return tuple(out)


def _service_ports(
    raw_ports: tuple[RawServicePort, ...] | None, *, keep_node_ports: bool
) -> tuple[ServicePort, ...]:
    if not raw_ports:
        return ()
    _absurd("spec.ports", raw_ports, MAX_PORTS)
    single = len(raw_ports) == 1
    names: set[str] = set()
    seen: set[tuple[int, Protocol]] = set()
    node_ports: set[tuple[int, Protocol]] = set()
    out: list[ServicePort] = []
    for i, raw in enumerate(raw_ports):
        at = f"spec.ports[{i}]"
        if raw.port is None:
            raise _Bad(f"{at}.port", "is required")
        port = _port_number(raw.port, f"{at}.port")
        protocol = _protocol(raw.protocol, f"{at}.protocol")
        if not raw.name and not single:
            raise _Bad(f"{at}.name", "is required when the Service has more than one port")
        if raw.name in names:
            raise _Bad(f"{at}.name", f'duplicate port name "{raw.name}"')
        if (port, protocol) in seen:
            raise _Bad(at, f"duplicate port {port}/{protocol.name}")
        names.add(raw.name)
        seen.add((port, protocol))
        # 0 is how the API spells "no node port" (e.g. allocateLoadBalancerNodePorts: false).
        node_port = _port_number(raw.node_port, f"{at}.nodePort") if raw.node_port else None
        if not keep_node_ports:
            node_port = None
        elif node_port is not None:
            if (node_port, protocol) in node_ports:
                raise _Bad(f"{at}.nodePort", f"duplicate node port {node_port}/{protocol.name}")
            node_ports.add((node_port, protocol))
        out.append(ServicePort(_shared_name(raw.name) or "", protocol, port, node_port))
    return _shared(tuple(out))


def _affinity_timeout(spec: RawServiceSpec) -> int | None:
    affinity = _choice(spec.session_affinity, "spec.sessionAffinity", ("None", "ClientIP"))
    if affinity != "ClientIP":
        return None
    config = spec.session_affinity_config
    timeout = config.client_ip.timeout_seconds if config and config.client_ip else None
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    if not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
        raise _Bad(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"{timeout} is out of range 1-{MAX_AFFINITY_TIMEOUT}",
        )
    return timeout


# --- EndpointSlice --------------------------------------------------------------------------

_ADDRESS_TYPES: Final[dict[str, Family]] = {"IPv4": 4, "IPv6": 6}


def to_slice(
    raw: RawEndpointSlice, *, report: Callable[[InvalidObject], None] | None = None
) -> EndpointSlice | Skip:
    """Validate one EndpointSlice; raise InvalidObject naming the first bad field.

    With `report`, an endpoint that cannot be used (a bad address, one of the wrong family)
    is left out of the slice and passed to `report`, so it does not take the slice's other
    endpoints down with it. Without `report`, it rejects the whole slice.
    """
    namespace, name = _identity("EndpointSlice", raw.metadata)
    left_out: list[_Bad] = []
    try:
        result = _slice(raw, namespace, name, left_out)
    except _Bad as exc:
        raise InvalidObject("EndpointSlice", namespace, name, exc.field, exc.message) from None
    if left_out:
        if report is None:
            bad = left_out[0]
            raise InvalidObject("EndpointSlice", namespace, name, bad.field, bad.message)
        for bad in left_out:
            report(InvalidObject("EndpointSlice", namespace, name, bad.field, bad.message))
    return result


def _slice(
    raw: RawEndpointSlice, namespace: str, name: str, left_out: list[_Bad]
) -> EndpointSlice | Skip:
    if raw.address_type == "FQDN":
        return Skip("FQDN EndpointSlice has no IP addresses to proxy to")
    family = _ADDRESS_TYPES.get(raw.address_type)
    if family is None:
        raise _Bad("addressType", f'"{raw.address_type}" is not IPv4, IPv6 or FQDN')
    labels = raw.metadata.labels if raw.metadata else None
    service_name = labels.get(SERVICE_NAME_LABEL) if labels else None
    if not service_name:
        return Skip(f"no {SERVICE_NAME_LABEL} label: not owned by a Service")
    addresses, facts = _endpoints(raw.endpoints, family, left_out)
    return EndpointSlice.of_columns(
        namespace, name, service_name, family, _slice_ports(raw.ports), addresses, facts
    )


def _slice_ports(raw_ports: tuple[RawEndpointPort, ...] | None) -> tuple[SlicePort, ...]:
    if not raw_ports:
        return ()
    _absurd("ports", raw_ports, MAX_PORTS)
    out: list[SlicePort] = []
    for i, raw in enumerate(raw_ports):
        # A nil port is legal in the API and matches no Service port.
        if raw.port is None:
            continue
        out.append(
            SlicePort(
                _shared_name(raw.name) or "",
                _protocol(raw.protocol, f"ports[{i}].protocol"),
                _port_number(raw.port, f"ports[{i}].port"),
            )
        )
    return _shared(tuple(out))


def _endpoints(
    raw_endpoints: tuple[RawEndpoint, ...] | None, family: Family, left_out: list[_Bad]
) -> tuple[tuple[str, ...], tuple[EndpointFacts, ...]]:
    """The slice's usable endpoints as columns: addresses, and the facts of each."""
    if not raw_endpoints:
        return (), ()
    _absurd("endpoints", raw_endpoints, MAX_ENDPOINTS)
    addresses: list[str] = []
    facts: list[EndpointFacts] = []
    for i, raw in enumerate(raw_endpoints):
        try:
            ip, its_facts = _endpoint(raw, i, family)
        except _Bad as exc:
            left_out.append(exc)
            continue
        addresses.append(ip)
        facts.append(its_facts)
    if not addresses:
        # Not one usable endpoint is a broken producer or a broken edit (a wrong addressType,
        # a mangled file), not a scale-down, which the API spells as no endpoints at all.
        # Rejecting the slice lets a manifest directory keep its last good endpoints ("a typo
        # never tears down a working Service"); where there is no last good state (a first
        # load, the API reflector) a rejected slice counts as absent, which sends traffic
        # exactly where an empty slice would. So rejecting is never worse than emptying.
        first = left_out[0]
        count = len(raw_endpoints)
        suffix = f"; none of the slice's {count} endpoints is usable" if count > 1 else ""
        raise _Bad(first.field, first.message + suffix)
    return tuple(addresses), tuple(facts)


def _endpoint(raw: RawEndpoint, index: int, family: Family) -> tuple[str, EndpointFacts]:
    # Runs once per endpoint: field paths are only built on failure.
    addresses = raw.addresses
    if not addresses:
        raise _Bad(f"endpoints[{index}].addresses", "is required and must not be empty")
    # Like kube-proxy, only the first address is used: the API defines the rest as unused.
    text = addresses[0]
    try:
        ip, got = canonical_ip(text)
    except ValueError as exc:
        raise _Bad(f"endpoints[{index}].addresses[0]", str(exc)) from None
    if got != family:
        raise _Bad(
            f"endpoints[{index}].addresses[0]",
            f'"{text}" is {_FAMILY_NAMES[got]} but addressType is {_FAMILY_NAMES[family]}',
        )
    cond = raw.conditions
    if cond is None:
        ready = serving = True
        terminating = False
    else:
        ready = True if cond.ready is None else cond.ready
        serving = ready if cond.serving is None else cond.serving
        terminating = cond.terminating is True
    hints = raw.hints
    zone_hints = node_hints = None
    if hints is not None:
        if hints.for_zones is not None:
            zone_hints = _name_set(hints.for_zones)
        if hints.for_nodes is not None:
            node_hints = _name_set(hints.for_nodes)
    return ip, endpoint_facts(
        _shared_name(raw.node_name),
        _shared_name(raw.zone),
        ready,
        serving,
        terminating,
        zone_hints,
        node_hints,
    )


# Every endpoint names its node and zone, every object its namespace, every port a name
# ("http"), and a cluster has few of each: one string per name instead of one per use.
_NAMES: SharedValues[str, str] = SharedValues()
# Port lists and family tuples repeat too: most Services of a cluster have one of a few
# (80/TCP "http", no node port), and so do their slices.
_VALUES: SharedValues[Any, Any] = SharedValues()
# Nearly every endpoint repeats one of a few hint sets; sharing them saves an allocation per
# endpoint.
_NAME_SETS: SharedValues[tuple[str, ...], frozenset[str]] = SharedValues()
_Value = TypeVar("_Value")


def _shared_name(name: str | None) -> str | None:
    return None if name is None else _NAMES.get(name, itself)


def _shared(value: _Value) -> _Value:
    return cast(_Value, _VALUES.get(value, itself))


def _name_set(items: tuple[RawForZone, ...] | tuple[RawForNode, ...]) -> frozenset[str]:
    return _NAME_SETS.get(tuple([item.name for item in items]), frozenset)


# --- ServiceCIDR ----------------------------------------------------------------------------

# The API allows one range per family.
MAX_SERVICE_CIDRS: Final = 2


def to_service_cidr(raw: RawServiceCIDR) -> ServiceCIDR:
    """A validated ServiceCIDR (cluster-scoped: no namespace)."""
    name = raw.metadata.name if raw.metadata else ""
    if not name:
        raise InvalidObject("ServiceCIDR", "", "", "metadata.name", "is required")
    texts = (raw.spec.cidrs if raw.spec else None) or ()
    try:
        if len(texts) > MAX_SERVICE_CIDRS:
            raise _Bad("spec.cidrs", f"{len(texts)} ranges; at most 2, one per family")
        return ServiceCIDR(name, _cidrs("spec.cidrs", texts))
    except _Bad as exc:
        raise InvalidObject("ServiceCIDR", "", name, exc.field, exc.message) from None
