"""Node identity and proxy options: everything about *this* node that shapes the ruleset.

Kept apart from the API objects so the compiler stays a pure function of (cluster, node).
Reading `KubeProxyConfiguration` files belongs to the daemon; this module only validates values.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from nftproxy.model import Family

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """An option value that cannot be used; the message names the option."""


def _family(net: IPNetwork) -> Family:
    return 4 if net.version == 4 else 6


@functools.cache
def _of_family(cidrs: tuple[str, ...], family: Family) -> tuple[str, ...]:
    # Called per Service port by the compiler: parse once.
    return tuple(c for c in cidrs if _family(ipaddress.ip_network(c)) == family)


def parse_networks(option: str, values: Iterable[str]) -> tuple[str, ...]:
    """Canonical, collapsed CIDRs: nftables rejects overlapping intervals in one set."""
    nets: list[IPNetwork] = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ConfigError(f"{option}: {part!r} is not a CIDR ({exc})") from None
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return tuple(str(n) for n in [*v4, *v6])


def parse_addresses(option: str, values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                addr = ipaddress.ip_address(part)
            except ValueError:
                raise ConfigError(f"{option}: {part!r} is not an IP address") from None
            if str(addr) not in out:
                out.append(str(addr))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_name: str = ""
    zone: str = ""
    node_ips: tuple[str, ...] = ()
    # Pod network(s); traffic to ClusterIPs from outside them is masqueraded.
    cluster_cidrs: tuple[str, ...] = ()
    # CIDRs whose local addresses accept NodePorts; empty means every local address.
    nodeport_addresses: tuple[str, ...] = ()
    # The ranges Service cluster IPs are allocated from (--service-cidr, ServiceCIDR objects).
    service_cidrs: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    service_proxy_name: str | None = None
    families: tuple[Family, ...] = field(default=(4, 6))

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ConfigError(f"masquerade-bit: {self.masquerade_bit} is not in 0..31")

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit

    def cluster_cidrs_of(self, family: Family) -> tuple[str, ...]:
        return _of_family(self.cluster_cidrs, family)

    def nodeport_cidrs_of(self, family: Family) -> tuple[str, ...]:
        return _of_family(self.nodeport_addresses, family)

    def service_cidrs_of(self, family: Family) -> tuple[str, ...]:
        return _of_family(self.service_cidrs, family)


def node_config(
    *,
    node_name: str = "",
    zone: str = "",
    node_ips: Iterable[str] = (),
    cluster_cidrs: Iterable[str] = (),
    nodeport_addresses: Iterable[str] = (),
    service_cidrs: Iterable[str] = (),
    masquerade_all: bool = False,
    masquerade_bit: int = 14,
    service_proxy_name: str | None = None,
) -> NodeConfig:
    """Build a validated NodeConfig from option strings (comma lists allowed)."""
    return NodeConfig(
        node_name=node_name,
        zone=zone,
        node_ips=parse_addresses("node-ip", node_ips),
        cluster_cidrs=parse_networks("cluster-cidr", cluster_cidrs),
        nodeport_addresses=parse_networks("nodeport-addresses", nodeport_addresses),
        service_cidrs=parse_networks("service-cidr", service_cidrs),
        masquerade_all=masquerade_all,
        masquerade_bit=masquerade_bit,
        service_proxy_name=service_proxy_name,
    )
