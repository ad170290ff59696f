"""The internal model: the few facts about Services and EndpointSlices that decide rules.

API payloads are decoded elsewhere (`nftproxy.kube.objects`) and converted once into these
immutable rows. Addresses are stored in canonical text form (`ipaddress` compressed), so two
spellings of one address compare equal everywhere downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Family = Literal[4, 6]


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


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


# Everything about an endpoint but its address: (node_name, zone, ready, serving,
# terminating, zone_hints, node_hints). Most endpoints of a cluster share one of a few.
_EndpointFacts = tuple[
    str | None, str | None, bool, bool, bool, frozenset[str] | None, frozenset[str] | None
]
_FACTS: dict[_EndpointFacts, _EndpointFacts] = {}
_FACTS_LIMIT = 4096  # keys come from API input


class Endpoint:
    """One endpoint address with its node, zone, conditions and topology hints.

    An address and a shared tuple of the rest: 48 bytes an endpoint instead of 96, which
    is 14 MB at 300k endpoints. Immutable, compared and hashed by value.
    """

    __slots__ = ("_facts", "ip")
    ip: str
    _facts: _EndpointFacts

    def __init__(
        self,
        ip: str,
        node_name: str | None = None,
        zone: str | None = None,
        ready: bool = True,
        serving: bool = True,
        terminating: bool = False,
        # None: the slice gave no hints; kube-proxy then ignores topology for the Service.
        zone_hints: frozenset[str] | None = None,
        node_hints: frozenset[str] | None = None,
    ) -> None:
        facts = (node_name, zone, ready, serving, terminating, zone_hints, node_hints)
        shared = _FACTS.get(facts)
        if shared is None:
            if len(_FACTS) >= _FACTS_LIMIT:
                _FACTS.clear()
            shared = _FACTS[facts] = facts
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "_facts", shared)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Endpoint is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Endpoint is immutable: cannot delete {name}")

    @property
    def node_name(self) -> str | None:
        return self._facts[0]

    @property
    def zone(self) -> str | None:
        return self._facts[1]

    @property
    def ready(self) -> bool:
        return self._facts[2]

    @property
    def serving(self) -> bool:
        return self._facts[3]

    @property
    def terminating(self) -> bool:
        return self._facts[4]

    @property
    def zone_hints(self) -> frozenset[str] | None:
        return self._facts[5]

    @property
    def node_hints(self) -> frozenset[str] | None:
        return self._facts[6]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self.ip == other.ip and self._facts == other._facts

    def __hash__(self) -> int:
        return hash((self.ip, self._facts))

    def __repr__(self) -> str:
        node, zone, ready, serving, terminating, zone_hints, node_hints = self._facts
        return (
            f"Endpoint(ip={self.ip!r}, node_name={node!r}, zone={zone!r}, ready={ready!r}, "
            f"serving={serving!r}, terminating={terminating!r}, zone_hints={zone_hints!r}, "
            f"node_hints={node_hints!r})"
        )

    def __reduce__(self) -> tuple[type[Endpoint], tuple[object, ...]]:
        return (Endpoint, (self.ip, *self._facts))


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    family: Family
    ports: tuple[SlicePort, ...]
    endpoints: tuple[Endpoint, ...] = field(default=())

    @property
    def service(self) -> ServiceName:
        return ServiceName(self.namespace, self.service_name)


@dataclass(frozen=True, slots=True)
class Backend:
    """One destination a packet can be DNATed to."""

    ip: str
    port: int
