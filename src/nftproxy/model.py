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


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    node_name: str | None = None
    zone: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    # None: the slice gave no hints; kube-proxy then ignores topology for the whole Service.
    zone_hints: frozenset[str] | None = None
    node_hints: frozenset[str] | None = None


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
