"""The internal model: the few facts about Services and EndpointSlices that decide rules.

API payloads are decoded elsewhere (`nftproxy.kube.objects`) and converted once into these
immutable rows. Addresses are stored in canonical text form (`ipaddress` compressed), so two
spellings of one address compare equal everywhere downstream.
"""

from __future__ import annotations

import contextlib
import operator
import socket
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import (
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    SupportsIndex,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

__all__ = [
    "Destination",
    "Endpoint",
    "EndpointFacts",
    "EndpointSlice",
    "Family",
    "Protocol",
    "Service",
    "ServiceCIDR",
    "ServiceName",
    "ServicePort",
    "SharedValues",
    "SliceName",
    "SlicePort",
    "V4Addresses",
    "endpoint_facts",
    "itself",
    "packed_addresses",
]

K = TypeVar("K")
V = TypeVar("V")

Family = Literal[4, 6]


class SharedValues(Generic[K, V]):
    """One shared object per distinct value instead of one per use: the API repeats node
    and zone names, port lists and endpoint facts across thousands of objects. Bounded
    because keys come from API input; a full table starts over."""

    __slots__ = ("__weakref__", "_limit", "_table")
    _every: ClassVar[weakref.WeakSet[SharedValues[Any, Any]]] = weakref.WeakSet()

    def __init__(self, limit: int = 4096) -> None:
        self._table: dict[K, V] = {}
        self._limit = limit
        SharedValues._every.add(self)

    @classmethod
    def clear_all(cls) -> None:
        """Forget every shared value (they are only a saving: the next use makes one
        again), so memory they pin can go back to the system."""
        for table in list(cls._every):
            table._table.clear()

    def get(self, key: K, make: Callable[[K], V]) -> V:
        """The shared value for `key`, made by `make(key)` the first time."""
        found = self._table.get(key)
        if found is None:
            if len(self._table) >= self._limit:
                self._table.clear()
            found = self._table[key] = make(key)
        return found


def itself(value: K) -> K:
    return value


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


# An EndpointSlice's (namespace, name).
SliceName: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ServiceName:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    id: ServiceName
    ports: tuple[ServicePort, ...]
    # An empty tuple means headless or not allocated: no ClusterIP frontend.
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_policy_local: bool = False
    internal_policy_local: bool = False
    affinity_timeout: int | None = None
    health_check_node_port: int | None = None
    families: tuple[Family, ...] = (4,)

    @property
    def has_external(self) -> bool:
        return bool(
            self.external_ips or self.load_balancer_ips or any(p.node_port for p in self.ports)
        )


class V4Addresses(bytes):
    """IPv4 addresses packed 4 bytes each, read as a sequence of their text forms.

    Packed, an address is 4 bytes rather than a str object; a cluster holds one per
    endpoint. Only IPv4: its text form is the same from any formatter, and most clusters
    are IPv4.
    """

    __slots__ = ()

    @classmethod
    def pack(cls, addresses: Iterable[str]) -> V4Addresses:
        """From dotted-quad texts; raises OSError for anything else."""
        return cls(b"".join([socket.inet_pton(socket.AF_INET, a) for a in addresses]))

    def __len__(self) -> int:
        return bytes.__len__(self) >> 2

    @overload  # type: ignore[override]
    def __getitem__(self, index: SupportsIndex) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> str | tuple[str, ...]:
        if isinstance(index, slice):
            return tuple(self.__iter__())[index]
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("V4Addresses index out of range")
        return socket.inet_ntoa(bytes.__getitem__(self, slice(i * 4, i * 4 + 4)))

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        ntoa, view = socket.inet_ntoa, memoryview(self)
        return (ntoa(view[i : i + 4]) for i in range(0, bytes.__len__(self), 4))

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and item in list(self.__iter__())

    # Equal only to packed addresses: not to the raw bytes it is made of, nor to a tuple
    # of the same texts (whose hash differs).
    def __eq__(self, other: object) -> bool:
        if isinstance(other, V4Addresses):
            return bytes.__eq__(self, other)
        return False if isinstance(other, bytes) else NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = bytes.__hash__

    def __repr__(self) -> str:
        return f"V4Addresses({tuple(self)!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        return (V4Addresses, (bytes(self),))


def packed_addresses(addresses: tuple[str, ...], family: Family) -> Sequence[str]:
    """IPv4 addresses packed (see V4Addresses); IPv6 ones as they are."""
    if family == 4:
        with contextlib.suppress(OSError):
            # A Sequence[str] by its overrides, though typed as the bytes it is.
            return cast(Sequence[str], V4Addresses.pack(addresses))
    return addresses


class EndpointFacts(NamedTuple):
    """Everything about an endpoint but its address. Most endpoints of a cluster share one
    of a few, and share one tuple (see endpoint_facts)."""

    node_name: str | None = None
    zone: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    # None: the slice gave no hints; kube-proxy then ignores topology for the Service.
    zone_hints: frozenset[str] | None = None
    node_hints: frozenset[str] | None = None


_FACTS: SharedValues[tuple[object, ...], EndpointFacts] = SharedValues()


def endpoint_facts(
    node_name: str | None = None,
    zone: str | None = None,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    zone_hints: frozenset[str] | None = None,
    node_hints: frozenset[str] | None = None,
) -> EndpointFacts:
    """The facts tuple, shared with every endpoint that has the same facts."""
    # Looked up as a plain tuple (equal to the named one, and cheaper to make): this runs
    # once per endpoint in the API's answers.
    key = (node_name, zone, ready, serving, terminating, zone_hints, node_hints)
    return _FACTS.get(key, EndpointFacts._make)


class Endpoint:
    """One endpoint address with its node, zone, conditions and topology hints.

    A view made on demand: an EndpointSlice stores its endpoints as columns (see there).
    Immutable, compared and hashed by value.
    """

    __slots__ = ("facts", "ip")
    ip: str
    facts: EndpointFacts

    def __init__(
        self,
        ip: str,
        node_name: str | None = None,
        zone: str | None = None,
        ready: bool = True,
        serving: bool = True,
        terminating: bool = False,
        zone_hints: frozenset[str] | None = None,
        node_hints: frozenset[str] | None = None,
    ) -> None:
        facts = endpoint_facts(node_name, zone, ready, serving, terminating, zone_hints, node_hints)
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "facts", facts)

    @classmethod
    def of(cls, ip: str, facts: EndpointFacts) -> Endpoint:
        ep = object.__new__(cls)
        object.__setattr__(ep, "ip", ip)
        object.__setattr__(ep, "facts", facts)
        return ep

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Endpoint is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Endpoint is immutable: cannot delete {name}")

    @property
    def node_name(self) -> str | None:
        return self.facts.node_name

    @property
    def zone(self) -> str | None:
        return self.facts.zone

    @property
    def ready(self) -> bool:
        return self.facts.ready

    @property
    def serving(self) -> bool:
        return self.facts.serving

    @property
    def terminating(self) -> bool:
        return self.facts.terminating

    @property
    def zone_hints(self) -> frozenset[str] | None:
        return self.facts.zone_hints

    @property
    def node_hints(self) -> frozenset[str] | None:
        return self.facts.node_hints

    def with_ip(self, ip: str) -> Endpoint:
        return Endpoint.of(ip, self.facts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.ip == other.ip and self.facts == other.facts

    def __hash__(self) -> int:
        return hash((self.ip, self.facts))

    def __repr__(self) -> str:
        node, zone, ready, serving, terminating, zone_hints, node_hints = self.facts
        return (
            f"Endpoint(ip={self.ip!r}, node_name={node!r}, zone={zone!r}, ready={ready!r}, "
            f"serving={serving!r}, terminating={terminating!r}, zone_hints={zone_hints!r}, "
            f"node_hints={node_hints!r})"
        )

    def __reduce__(self) -> tuple[type[Endpoint], tuple[object, ...]]:
        return (Endpoint, (self.ip, *self.facts))


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    protocol: Protocol
    port: int


class EndpointSlice:
    """One EndpointSlice: its Service, address family, ports and endpoints.

    Endpoints are kept as two columns: their addresses (IPv4 packed, see V4Addresses) and
    their facts, with one facts entry for the whole slice when every endpoint shares it
    (the usual case): a few bytes an endpoint instead of an Endpoint object, its str
    address and the pointers to them. `endpoints` makes Endpoint views on demand.
    Immutable, compared and hashed by value.
    """

    __slots__ = ("_facts", "addresses", "family", "name", "namespace", "ports", "service_name")
    namespace: str
    name: str
    service_name: str
    family: Family
    ports: tuple[SlicePort, ...]
    addresses: Sequence[str]
    _facts: tuple[EndpointFacts, ...]

    def __init__(
        self,
        namespace: str,
        name: str,
        service_name: str,
        family: Family,
        ports: tuple[SlicePort, ...],
        endpoints: Iterable[Endpoint] = (),
    ) -> None:
        eps = tuple(endpoints)
        self._init(
            namespace,
            name,
            service_name,
            family,
            ports,
            tuple([e.ip for e in eps]),
            tuple([e.facts for e in eps]),
        )

    @classmethod
    def of_columns(
        cls,
        namespace: str,
        name: str,
        service_name: str,
        family: Family,
        ports: tuple[SlicePort, ...],
        addresses: tuple[str, ...],
        facts: tuple[EndpointFacts, ...],
    ) -> EndpointSlice:
        """From parallel columns: the address and the facts of each endpoint."""
        if len(addresses) != len(facts):
            raise ValueError("an EndpointSlice needs one facts entry per address")
        sl = object.__new__(cls)
        sl._init(namespace, name, service_name, family, ports, addresses, facts)
        return sl

    def _init(
        self,
        namespace: str,
        name: str,
        service_name: str,
        family: Family,
        ports: tuple[SlicePort, ...],
        addresses: tuple[str, ...],
        facts: tuple[EndpointFacts, ...],
    ) -> None:
        if len(facts) > 1 and all(f == facts[0] for f in facts):
            facts = facts[:1]
        init = object.__setattr__
        init(self, "namespace", namespace)
        init(self, "name", name)
        init(self, "service_name", service_name)
        init(self, "family", family)
        init(self, "ports", ports)
        init(self, "addresses", packed_addresses(addresses, family))
        init(self, "_facts", facts)

    def columns(self) -> Iterator[tuple[str, EndpointFacts]]:
        """(address, facts) of each endpoint, without making Endpoint objects."""
        facts = self._facts
        if len(facts) == 1:
            shared = facts[0]
            return ((ip, shared) for ip in self.addresses)
        return zip(self.addresses, facts, strict=True)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple([Endpoint.of(ip, facts) for ip, facts in self.columns()])

    def with_endpoints(self, endpoints: Iterable[Endpoint]) -> EndpointSlice:
        return EndpointSlice(
            self.namespace, self.name, self.service_name, self.family, self.ports, endpoints
        )

    @property
    def service(self) -> ServiceName:
        return ServiceName(self.namespace, self.service_name)

    def _key(self) -> tuple[object, ...]:
        return (
            self.namespace,
            self.name,
            self.service_name,
            self.family,
            self.ports,
            self.addresses,
            self._facts,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointSlice):
            return NotImplemented
        return self is other or self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"EndpointSlice is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"EndpointSlice is immutable: cannot delete {name}")

    def __repr__(self) -> str:
        return (
            f"EndpointSlice(namespace={self.namespace!r}, name={self.name!r}, "
            f"service_name={self.service_name!r}, family={self.family!r}, "
            f"ports={self.ports!r}, endpoints={self.endpoints!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            EndpointSlice.of_columns,
            (
                self.namespace,
                self.name,
                self.service_name,
                self.family,
                self.ports,
                tuple(self.addresses),
                tuple([facts for _, facts in self.columns()]),
            ),
        )


@dataclass(frozen=True, slots=True)
class Destination:
    """One address and port a packet can be DNATed to: an endpoint of a Service port."""

    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """A range Services take their ClusterIPs from (networking.k8s.io/v1 ServiceCIDR):
    an address in it that no Service holds is dropped, as kube-proxy does."""

    name: str
    cidrs: tuple[str, ...]
