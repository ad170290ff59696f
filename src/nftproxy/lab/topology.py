"""What a lab looks like: nodes, pods and one external client, as immutable values (built by
`nftproxy.lab.netns`). Nodes share one link with the external client; each owns a pod CIDR
routed to its pods over point-to-point veths. Addresses are canonical text (as in
`nftproxy.model`), so they compare equal to what a client prints; the address plan is in
the constants below and `Node.numbered`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

__all__ = [
    "CLUSTER_CIDR4",
    "CLUSTER_CIDR6",
    "EXT_IP4",
    "EXT_IP6",
    "FIRST_POD_HOST",
    "LINK4",
    "LINK6",
    "LOADBALANCER_CIDR4",
    "LOADBALANCER_CIDR6",
    "MAX_NODES",
    "RESERVED_NAMES",
    "SERVICE_CIDR4",
    "SERVICE_CIDR6",
    "External",
    "Node",
    "Pod",
    "Topology",
    "TopologyError",
    "default_topology",
]

# The shared link between nodes and the external client.
LINK4 = "192.168.77.0/24"
LINK6 = "fd00:77::/64"
EXT_IP4 = "192.168.77.100"
EXT_IP6 = "fd00:77::100"
# What the whole cluster's pods live in, per family.
CLUSTER_CIDR4 = "10.244.0.0/16"
CLUSTER_CIDR6 = "fd00:244::/32"
# Service ranges the external client routes to the first node (an upstream router).
SERVICE_CIDR4 = "10.96.0.0/12"
SERVICE_CIDR6 = "fd00:96::/108"
LOADBALANCER_CIDR4 = "198.51.100.0/24"
LOADBALANCER_CIDR6 = "2001:db8:51::/64"
# Pod addresses start at this host number in each node's pod CIDR.
FIRST_POD_HOST = 10
MAX_NODES = 89  # link addresses .11 .. .99; .100 is the external client

# Names become part of namespace and interface names: keep them DNS-label-like and short.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
RESERVED_NAMES = frozenset({"ext", "net"})


class TopologyError(ValueError):
    """A topology that cannot be built (bad name, address clash, unknown node...)."""


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise TopologyError(
            f"{kind} name {name!r} must be 1-32 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )


def _addr(kind: str, text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError as exc:
        raise TopologyError(f"{kind}: {exc}") from None
    if addr.version != version:
        raise TopologyError(f"{kind}: {text} is not an IPv{version} address")
    return str(addr)


def _net(kind: str, text: str, version: int) -> str:
    try:
        net = ipaddress.ip_network(text)
    except ValueError as exc:
        raise TopologyError(f"{kind}: {exc}") from None
    if net.version != version:
        raise TopologyError(f"{kind}: {text} is not an IPv{version} network")
    return str(net)


def _addrs(kind: str, texts: tuple[str, ...]) -> tuple[str, ...]:
    """Addresses of either family, canonical."""
    out = []
    for text in texts:
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError as exc:
            raise TopologyError(f"{kind}: {exc}") from None
    return tuple(out)


def _v6_with_digits(net6: str, host: int) -> str:
    """fd00:244:1::/64 and host 12 -> fd00:244:1::12 (same digits, read as hex)."""
    base = ipaddress.IPv6Network(net6)
    return str(base.network_address + int(str(host), 16))


@dataclass(frozen=True, slots=True)
class Node:
    """A Kubernetes node: a namespace with a link address and a pod CIDR per family."""

    name: str
    index: int
    ip4: str
    ip6: str
    pod_cidr4: str
    pod_cidr6: str
    # More addresses on its uplink, after ip4 and ip6 (which stay the addresses it
    # masquerades to): with the link's prefix length when inside the link, else as host
    # addresses, which the external client routes to this node.
    extra_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("node", self.name)
        if self.name in RESERVED_NAMES:
            raise TopologyError(f"node name {self.name!r} is reserved")
        object.__setattr__(self, "ip4", _addr(f"node {self.name} ip4", self.ip4, 4))
        object.__setattr__(self, "ip6", _addr(f"node {self.name} ip6", self.ip6, 6))
        object.__setattr__(
            self, "extra_ips", _addrs(f"node {self.name} extra_ips", tuple(self.extra_ips))
        )
        object.__setattr__(
            self, "pod_cidr4", _net(f"node {self.name} pod_cidr4", self.pod_cidr4, 4)
        )
        object.__setattr__(
            self, "pod_cidr6", _net(f"node {self.name} pod_cidr6", self.pod_cidr6, 6)
        )

    @classmethod
    def numbered(cls, index: int, name: str | None = None) -> Node:
        """Node `index` (1-based) with the lab's standard addresses: link 192.168.77.<10+i>
        and fd00:77::<10+i>, pod CIDRs 10.244.<i>.0/24 and fd00:244:<i>::/64. Its pods get
        host numbers from FIRST_POD_HOST in both, the IPv6 one written with the same digits
        (10.244.1.12 pairs with fd00:244:1::12)."""
        if not 1 <= index <= MAX_NODES:
            raise TopologyError(f"node index must be 1..{MAX_NODES}, not {index}")
        return cls(
            name=name or f"node-{index}",
            index=index,
            ip4=f"192.168.77.{10 + index}",
            ip6=_v6_with_digits(LINK6, 10 + index),
            pod_cidr4=f"10.244.{index}.0/24",
            pod_cidr6=f"fd00:244:{index}::/64",
        )

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ip4, self.ip6)


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod: its own namespace behind a veth to its node; IPv6 is optional."""

    name: str
    node: str
    ip4: str
    ip6: str | None = None

    def __post_init__(self) -> None:
        _check_name("pod", self.name)
        if self.name in RESERVED_NAMES:
            raise TopologyError(f"pod name {self.name!r} is reserved")
        object.__setattr__(self, "ip4", _addr(f"pod {self.name} ip4", self.ip4, 4))
        if self.ip6 is not None:
            object.__setattr__(self, "ip6", _addr(f"pod {self.name} ip6", self.ip6, 6))

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip4,) if self.ip6 is None else (self.ip4, self.ip6)

    def ip(self, family: int) -> str:
        """The pod's address of that family (4 or 6); LookupError if it has none."""
        if family == 4:
            return self.ip4
        if family == 6 and self.ip6 is not None:
            return self.ip6
        raise LookupError(f"pod {self.name} has no IPv{family} address")


@dataclass(frozen=True, slots=True)
class External:
    """The client outside the cluster, on the nodes' link; routes Service ranges to a node."""

    name: str = "ext"
    ip4: str = EXT_IP4
    ip6: str = EXT_IP6
    # More addresses it can send from (host addresses on its uplink), such as an outside
    # network's; nodes reach them through their default route, the external client.
    extra_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip4", _addr("ext ip4", self.ip4, 4))
        object.__setattr__(self, "ip6", _addr("ext ip6", self.ip6, 6))
        object.__setattr__(self, "extra_ips", _addrs("ext extra_ips", tuple(self.extra_ips)))

    @property
    def ips(self) -> tuple[str, str]:
        return (self.ip4, self.ip6)


@dataclass(frozen=True, slots=True)
class Topology:
    """Nodes, pods and the external client. Change it with `with_pod`/`without_pod`,
    which return a new, validated topology."""

    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...] = ()
    ext: External = field(default_factory=External)
    link4: str = LINK4
    link6: str = LINK6
    cluster_cidrs: tuple[str, str] = (CLUSTER_CIDR4, CLUSTER_CIDR6)
    # What the external client routes to the first node, any number of either family.
    service_cidrs: tuple[str, ...] = (SERVICE_CIDR4, SERVICE_CIDR6)
    loadbalancer_cidrs: tuple[str, ...] = (LOADBALANCER_CIDR4, LOADBALANCER_CIDR6)
    # The external client is also the cluster's router: it forwards and routes each node's
    # pod CIDRs to that node. A packet a node sends out unhandled to a Service or
    # load-balancer address (its default route) then comes back to it, and so on until
    # its TTL runs out: its sender gets an ICMP error rather than silence, which tells
    # "the proxy dropped it" apart from "the proxy did nothing".
    ext_router: bool = False

    def __post_init__(self) -> None:
        if not self.nodes:
            raise TopologyError("a topology needs at least one node")
        link4 = ipaddress.IPv4Network(_net("link4", self.link4, 4))
        link6 = ipaddress.IPv6Network(_net("link6", self.link6, 6))
        names: set[str] = set()
        addrs: dict[str, str] = {}
        indexes: set[int] = set()

        def claim_name(kind: str, name: str) -> None:
            if name in names:
                raise TopologyError(f"{kind} name {name!r} is used twice")
            names.add(name)

        def claim_addr(owner: str, addr: str) -> None:
            if addr in addrs:
                raise TopologyError(f"{owner} and {addrs[addr]} both have address {addr}")
            addrs[addr] = owner

        claim_name("ext", self.ext.name)
        for owner_addr, link in ((self.ext.ip4, link4), (self.ext.ip6, link6)):
            if ipaddress.ip_address(owner_addr) not in link:
                raise TopologyError(f"ext address {owner_addr} is outside the link {link}")
            claim_addr("ext", owner_addr)
        for extra in self.ext.extra_ips:
            claim_addr("ext", extra)
        by_node: dict[str, Node] = {}
        for node in self.nodes:
            claim_name("node", node.name)
            if node.index in indexes:
                raise TopologyError(f"node index {node.index} is used twice")
            indexes.add(node.index)
            by_node[node.name] = node
            for addr, link in ((node.ip4, link4), (node.ip6, link6)):
                if ipaddress.ip_address(addr) not in link:
                    raise TopologyError(f"node {node.name} address {addr} is outside {link}")
                claim_addr(f"node {node.name}", addr)
            for extra in node.extra_ips:
                claim_addr(f"node {node.name}", extra)
        for a in self.nodes:
            for b in self.nodes:
                if a.name < b.name:
                    for ca, cb in ((a.pod_cidr4, b.pod_cidr4), (a.pod_cidr6, b.pod_cidr6)):
                        if ipaddress.ip_network(ca).overlaps(ipaddress.ip_network(cb)):
                            raise TopologyError(
                                f"pod CIDRs of {a.name} ({ca}) and {b.name} ({cb}) overlap"
                            )
        for pod in self.pods:
            claim_name("pod", pod.name)
            host = by_node.get(pod.node)
            if host is None:
                raise TopologyError(f"pod {pod.name} is on unknown node {pod.node!r}")
            pairs: tuple[tuple[str | None, str], ...] = (
                (pod.ip4, host.pod_cidr4),
                (pod.ip6, host.pod_cidr6),
            )
            for pod_ip, cidr in pairs:
                if pod_ip is None:
                    continue
                net = ipaddress.ip_network(cidr)
                ip = ipaddress.ip_address(pod_ip)
                if ip not in net or ip in (net.network_address, net.broadcast_address):
                    raise TopologyError(
                        f"pod {pod.name} address {pod_ip} is not a host of {host.name}'s {cidr}"
                    )
                claim_addr(f"pod {pod.name}", pod_ip)

    # -- lookups --------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"no pod {name!r} (pods: {', '.join(p.name for p in self.pods)})")

    def pods_on(self, node: str) -> tuple[Pod, ...]:
        self.node(node)
        return tuple(p for p in self.pods if p.node == node)

    def pod_by_ip(self, ip: str) -> Pod:
        canonical = str(ipaddress.ip_address(ip))
        for pod in self.pods:
            if canonical in pod.ips:
                return pod
        raise KeyError(f"no pod has address {ip}")

    @property
    def names(self) -> tuple[str, ...]:
        """Every node, pod and the external client's name (each is one namespace)."""
        return (*(n.name for n in self.nodes), *(p.name for p in self.pods), self.ext.name)

    # -- changes --------------------------------------------------------------------------

    def new_pod(self, node: str, name: str | None = None, *, ipv6: bool = True) -> Pod:
        """A pod on `node` with the first free name (`pod-<n>`) and addresses; not yet
        part of the topology: pass it to `with_pod` (or `Lab.add_pod`)."""
        owner = self.node(node)
        taken = set(self.names)
        if name is None:
            n = len(self.pods) + 1
            while f"pod-{n}" in taken:
                n += 1
            name = f"pod-{n}"
        net4 = ipaddress.IPv4Network(owner.pod_cidr4)
        used = {a for p in self.pods for a in p.ips}
        for host in range(FIRST_POD_HOST, net4.num_addresses - 1):
            ip4 = str(net4.network_address + host)
            ip6 = _v6_with_digits(owner.pod_cidr6, host) if ipv6 else None
            if ip4 not in used and (ip6 is None or ip6 not in used):
                return Pod(name=name, node=node, ip4=ip4, ip6=ip6)
        raise TopologyError(f"node {node}'s pod CIDR {owner.pod_cidr4} is full")

    def with_pod(self, pod: Pod) -> Topology:
        return replace(self, pods=(*self.pods, pod))

    def without_pod(self, name: str) -> Topology:
        self.pod(name)
        return replace(self, pods=tuple(p for p in self.pods if p.name != name))


def default_topology(nodes: int = 2, pods_per_node: int = 2, *, ipv6: bool = True) -> Topology:
    """`nodes` nodes (node-1...) with `pods_per_node` pods each (pod-1, pod-2 on node-1,
    then pod-3... on node-2), dual-stack unless `ipv6` is false (pods only; nodes and the
    external client always have both families)."""
    if nodes < 1:
        raise TopologyError("a topology needs at least one node")
    if pods_per_node < 0:
        raise TopologyError("pods_per_node cannot be negative")
    topo = Topology(nodes=tuple(Node.numbered(i) for i in range(1, nodes + 1)))
    for node in topo.nodes:
        for _ in range(pods_per_node):
            topo = topo.with_pod(topo.new_pod(node.name, ipv6=ipv6))
    return topo
