"""Node identity and proxy options: everything about *this* node that shapes the ruleset,
validated (CIDRs, NodePort addresses, bind addresses). Kept apart from the API objects so
the compiler stays a pure function of (cluster, node); proxyconfig reads kube-proxy's
config file into these values, and the daemon follows the node's interface addresses.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from nftproxy import addresses
from nftproxy.model import Family

__all__ = [
    "PRIMARY",
    "BindAddressError",
    "ConfigError",
    "IPNetwork",
    "NodeConfig",
    "node_config",
    "parse_addresses",
    "parse_networks",
    "parse_nodeport_addresses",
    "service_cidr_union",
    "split_host_port",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# kube-proxy's special --nodeport-addresses value: the node's primary address of each family.
PRIMARY = "primary"


class ConfigError(ValueError):
    """An option value that cannot be used; the message names the option."""


def _family(net: IPNetwork) -> Family:
    return 4 if net.version == 4 else 6


@functools.cache
def _of_family(cidrs: tuple[str, ...], family: Family) -> tuple[str, ...]:
    # Called per Service port by the compiler: parse once.
    return tuple(c for c in cidrs if _family(ipaddress.ip_network(c)) == family)


def parse_networks(option: str, values: Iterable[str]) -> tuple[str, ...]:
    """Canonical, collapsed CIDRs: nftables rejects overlapping intervals in one set.
    Leading zeros are accepted, as kube-proxy's flags accept them (`nftproxy.addresses`)."""
    nets: list[IPNetwork] = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                nets.append(addresses.ip_network(part, strict=False))
            except ValueError as exc:
                raise ConfigError(f"{option}: {part!r} is not a CIDR ({exc})") from None
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return tuple(str(n) for n in [*v4, *v6])


def parse_nodeport_addresses(option: str, values: Iterable[str]) -> tuple[str, ...]:
    """CIDRs, or `primary` on its own (as kube-proxy accepts it)."""
    parts = [p.strip() for raw in values for p in raw.split(",") if p.strip()]
    if PRIMARY in parts:
        if len(parts) > 1:
            raise ConfigError(f"{option}: {PRIMARY!r} cannot be combined with CIDRs")
        return (PRIMARY,)
    return parse_networks(option, parts)


# Bounded: the daemon's interface addresses change over its life (each change is a key).
@functools.lru_cache(maxsize=64)
def _nodeport_networks(
    addresses: tuple[str, ...], node_ips: tuple[str, ...], family: Family
) -> tuple[IPNetwork, ...] | None:
    """The networks that select this family's NodePort addresses; None when every local
    address accepts them: no CIDR of this family was given, or one holding all (kube-proxy
    then matches all addresses of that family too)."""
    if addresses == (PRIMARY,):
        first = next((a for a in node_ips if ipaddress.ip_address(a).version == family), None)
        # A loopback node IP is no primary address (kube-proxy falls back to it when the
        # node has none).
        if first is None or ipaddress.ip_address(first).is_loopback:
            nets: tuple[IPNetwork, ...] = ()
        else:
            nets = (ipaddress.ip_network(first),)
    else:
        nets = tuple(n for n in map(ipaddress.ip_network, addresses) if _family(n) == family)
    if not nets or any(n.prefixlen == 0 for n in nets):
        return None
    return nets


@functools.lru_cache(maxsize=64)
def _nodeport_ips(
    addresses: tuple[str, ...],
    node_ips: tuple[str, ...],
    candidates: tuple[str, ...],
    family: Family,
) -> tuple[str, ...]:
    nets = _nodeport_networks(addresses, node_ips, family) or ()
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in candidates:
        addr = ipaddress.ip_address(text)
        # Never loopback: a packet DNATed from 127.0.0.1 is dropped as martian on its way
        # to the pod, so kube-proxy's nftables mode does not serve NodePorts there either.
        if addr.version == family and not addr.is_loopback and any(addr in n for n in nets):
            found.add(addr)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    # Spelled as nft lists them (inet_ntop), so that a comparison finds no difference.
    return tuple(socket.inet_ntop(af, a.packed) for a in sorted(found))


def parse_addresses(option: str, values: Iterable[str]) -> tuple[str, ...]:
    """Canonical addresses, in order and once each; leading zeros accepted as above."""
    out: list[str] = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                addr = addresses.ip_address(part)
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
    # CIDRs that select which of this node's addresses accept NodePorts, or ("primary",):
    # its first node IP of each family. A family without any accepts them on every local
    # address (see nodeport_ips_of).
    nodeport_addresses: tuple[str, ...] = ()
    # The addresses of this node's interfaces, as the daemon reads them (with --node-ip's);
    # None: not known, the node IPs stand for them (compile, plan, apply, explain).
    interface_ips: tuple[str, ...] | None = None
    # Service ClusterIP ranges (flags and ServiceCIDR objects): an address in them that no
    # Service holds is dropped, as kube-proxy does.
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

    def nodeport_match_all(self, family: Family) -> bool:
        """Whether every local address of this family accepts NodePorts (but loopback)."""
        return _nodeport_networks(self.nodeport_addresses, self.node_ips, family) is None

    def nodeport_ips_of(self, family: Family) -> tuple[str, ...]:
        """This node's own addresses of this family that accept NodePorts, when not every
        local one does: those in the nodeport addresses' CIDRs, never loopback. An address
        only routed through the node is never one, whatever CIDR holds it."""
        if self.nodeport_match_all(family):
            return ()
        candidates = self.node_ips if self.interface_ips is None else self.interface_ips
        return _nodeport_ips(self.nodeport_addresses, self.node_ips, candidates, family)

    def nodeport_warnings(self) -> list[str]:
        """One line per family in which nodeport addresses are given but none of the node's
        addresses is among them: no NodePort would be served there."""
        out = []
        for f in self.families:
            if self.nodeport_match_all(f) or self.nodeport_ips_of(f):
                continue
            given = ", ".join(self.nodeport_addresses)
            if self.interface_ips is None:
                known = [a for a in self.node_ips if ipaddress.ip_address(a).version == f]
                have = f"--node-ip {', '.join(known)}" if known else "no --node-ip"
                hint = "" if known else "; give the node's addresses with --node-ip"
            else:
                known = [a for a in self.interface_ips if ipaddress.ip_address(a).version == f]
                have = f"its addresses {', '.join(known)}" if known else "no address"
                hint = ""
            out.append(
                f"--nodeport-addresses {given}: this node has no IPv{f} address there "
                f"({have}): no NodePort is served over IPv{f}{hint}"
            )
        return out

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
        nodeport_addresses=parse_nodeport_addresses("nodeport-addresses", nodeport_addresses),
        service_cidrs=parse_networks("service-cidr", service_cidrs),
        masquerade_all=masquerade_all,
        masquerade_bit=masquerade_bit,
        service_proxy_name=service_proxy_name,
    )


def service_cidr_union(flagged: Iterable[str], objects: Iterable[str]) -> tuple[str, ...]:
    """The ranges of --service-cidr and of ServiceCIDR objects, together and collapsed."""
    return parse_networks("ServiceCIDR", [*flagged, *objects])


# --- bind addresses ----------------------------------------------------------------------


class BindAddressError(ValueError):
    """A bind address that is not HOST:PORT (or a bare HOST where a default port applies)."""


def split_host_port(option: str, text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"0.0.0.0:10256"``, ``"[::]:10256"``; a bare address takes ``default_port``."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BindAddressError(f"{option}: {text!r} has an unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BindAddressError(f"{option}: {text!r} is not [HOST]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise BindAddressError(f"{option}: {host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise BindAddressError(f"{option}: {text!r} needs a port (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BindAddressError(f"{option}: port {port_text!r} is not in 0..65535")
    return host, int(port_text)
