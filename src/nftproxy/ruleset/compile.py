"""Services -> ruleset: a fixed skeleton (`skeleton_sets`, `skeleton_chains`) plus one
`Fragment` of elements per Service (`compile_service`). Nothing grows per Service except
under session affinity, which has no shared form in nft 1.0.6. The layout, and why:
docs/ruleset.md."""

from __future__ import annotations

import hashlib
import ipaddress
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nftproxy.config import NodeConfig
from nftproxy.model import (
    Destination,
    EndpointSlice,
    Family,
    Service,
    ServiceName,
    ServicePort,
    packed_addresses,
)
from nftproxy.ruleset.schema import (
    DROP,
    PORT_FIELD,
    PROTO_FIELD,
    RECORD,
    SKELETON_MARK,
    VERDICT_DATA,
    Atom,
    Chain,
    ClearMarkBits,
    CtStatusDnat,
    Dnat,
    DnatMap,
    ElementKey,
    ElementValue,
    FibLocal,
    Hook,
    Key,
    L4Proto,
    Lookup,
    MarkSet,
    Masquerade,
    NfProto,
    NotLoopback,
    NumgenVmap,
    Reject,
    Rule,
    SetDef,
    SetMarkBits,
    UpdateSet,
    Verdict,
    Vmap,
    addr_field,
    goto,
    interval_atoms,
    jump,
    record_set,
    typeof_addr,
    typeof_numgen,
    typeof_port,
)
from nftproxy.selection import Selection, select

__all__ = [
    "BASE_CHAINS",
    "FAMILIES",
    "PROTOCOLS",
    "Block",
    "Firewall",
    "Fragment",
    "Names",
    "PickSpec",
    "block_items",
    "block_of",
    "block_values",
    "compile_all",
    "compile_service",
    "firewall_items",
    "firewall_of",
    "group_slices",
    "skeleton_chains",
    "skeleton_elements",
    "skeleton_sets",
]

FAMILIES: tuple[Family, Family] = (4, 6)
PROTOCOLS = ("tcp", "udp", "sctp")
BASE_CHAINS = ("nat-prerouting", "nat-output", "nat-postrouting")

_DADDR_PROTO_PORT = ("daddr", "l4proto", "dport")
_PROTO_PORT = ("l4proto", "dport")


@dataclass(frozen=True, slots=True)
class Names:
    """Object names of one generation. Base chains are not prefixed: they are what flips."""

    prefix: str = "g1-"

    def __call__(self, name: str) -> str:
        # Interned: every Service's fragment names the same shared sets, and the desired
        # state keeps those names per Service: one string each, not one per Service.
        return sys.intern(self.prefix + name)

    def pick(self, family: Family, proto: str, *, local: bool, nodeport: bool, n: int) -> str:
        kind = ("np-" if nodeport else "") + ("pick-local" if local else "pick")
        return self(f"{kind}{family}-{proto}-{n}")

    def endpoints(self, family: Family, proto: str, *, local: bool, nodeport: bool) -> str:
        kind = ("np-" if nodeport else "") + ("endpoints-local" if local else "endpoints")
        return self(f"{kind}{family}-{proto}")


def _family_of(ip: str) -> Family:
    return 6 if ":" in ip else 4


def _holds_any(cidrs: Iterable[str], addresses: Iterable[str]) -> bool:
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return any(ipaddress.ip_address(a) in n for a in addresses for n in nets)


@dataclass(frozen=True, slots=True)
class PickSpec:
    """A shared `pick` chain, identified by what it needs to be built."""

    family: Family
    proto: str
    local: bool
    nodeport: bool
    n: int

    def chain(self, names: Names) -> Chain:
        kw = {"local": self.local, "nodeport": self.nodeport}
        fields = ("dport",) if self.nodeport else ("daddr", "dport")
        key = Key(fields, self.family, numgen=self.n, l4=self.proto)  # type: ignore[arg-type]
        emap = names.endpoints(self.family, self.proto, **kw)
        return Chain(
            names.pick(self.family, self.proto, n=self.n, **kw),
            ((DnatMap(self.family, key, emap),),),
        )


# The buckets 0..n-1 of one frontend in an endpoint map, as stored: (port, addresses)
# when every endpoint has that port (the usual case; IPv4 addresses packed), else
# (None, (address, port) values).
Block = tuple[Atom | None, Sequence[Any]]


def block_of(backends: tuple[Destination, ...], family: Family) -> Block:
    port = backends[0].port if backends else None
    if all(b.port == port for b in backends):
        return port, packed_addresses(tuple([b.ip for b in backends]), family)
    return None, tuple([(b.ip, b.port) for b in backends])


def block_values(block: Block) -> tuple[ElementValue, ...]:
    port, payload = block
    return tuple(payload) if port is None else tuple([(addr, port) for addr in payload])


def block_items(frontend: ElementKey, block: Block) -> Iterator[tuple[ElementKey, ElementValue]]:
    port, payload = block
    if port is None:
        for bucket, value in enumerate(payload):
            yield (*frontend, bucket), value
    else:
        for bucket, addr in enumerate(payload):
            yield (*frontend, bucket), (addr, port)


# A frontend's load-balancer source-range firewall: None for none (also when no range is of
# the frontend's family, as in kube-proxy), else the allowed ranges in kernel form (see
# interval_atoms).
Firewall = tuple[str, ...] | None


def firewall_of(allow_set: str) -> str:
    """The `firewall{f}` set that goes with the `firewall-allow{f}` set named."""
    head, _, family = allow_set.rpartition("firewall-allow")
    return f"{head}firewall{family}"


def firewall_items(
    allow_set: str, firewalls: Mapping[ElementKey, Firewall]
) -> Iterator[tuple[str, ElementKey]]:
    """The elements of firewall{f} and firewall-allow{f} these firewalls make."""
    fw = firewall_of(allow_set)
    for frontend, allowed in firewalls.items():
        if allowed is not None:
            yield fw, frontend
            for cidr in allowed:
                yield allow_set, (*frontend, cidr)


@dataclass(slots=True)
class Fragment:
    """What one Service contributes: elements of shared sets, and its own objects if any.

    Endpoint maps come as blocks (frontend -> its buckets), the form the desired state
    keeps them in; firewalls as one claim per frontend (by firewall-allow set name), so a
    frontend two Services claim gets the firewall of the one that wins it, whole.
    `all_elements` spells both out."""

    elements: dict[str, dict[ElementKey, ElementValue]] = field(default_factory=dict)
    blocks: dict[str, dict[ElementKey, Block]] = field(default_factory=dict)
    firewalls: dict[str, dict[ElementKey, Firewall]] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, SetDef] = field(default_factory=dict)
    picks: set[PickSpec] = field(default_factory=set)

    def add(self, set_name: str, key: ElementKey, value: ElementValue = None) -> None:
        self.elements.setdefault(set_name, {}).setdefault(key, value)

    def fingerprint(self, owner: tuple[str, str]) -> int:
        """128 bits that change with anything this fragment puts in the table, the same in
        every process (see DesiredState.digest). Not `hash()`: strings hash differently
        in each process."""
        blocks = {
            name: [(k, port, bytes(addrs) if isinstance(addrs, bytes) else addrs)
                   for k, (port, addrs) in each.items()]
            for name, each in self.blocks.items()
        }  # fmt: skip
        picks = sorted(map(repr, self.picks))
        text = repr((owner, self.elements, blocks, self.firewalls, self.chains, self.sets, picks))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "little")

    def all_elements(self) -> dict[str, dict[ElementKey, ElementValue]]:
        out = {name: dict(elems) for name, elems in self.elements.items()}
        for name, blocks in self.blocks.items():
            out[name] = {
                k: v for frontend, block in blocks.items() for k, v in block_items(frontend, block)
            }
        for name, firewalls in self.firewalls.items():
            for set_name, key in firewall_items(name, firewalls):
                out.setdefault(set_name, {})[key] = None
        return out


# --- skeleton ------------------------------------------------------------------------


def skeleton_sets(names: Names, node: NodeConfig) -> dict[str, SetDef]:
    sets: list[SetDef] = []
    for f in FAMILIES:
        a = addr_field(f)
        frontend = (a, PROTO_FIELD, PORT_FIELD)
        nodeport = (PROTO_FIELD, PORT_FIELD)
        for name in ("frontends", "short-circuit"):
            sets.append(SetDef(names(f"{name}{f}"), frontend, VERDICT_DATA))
        for name in ("nodeports", "np-short-circuit"):
            sets.append(SetDef(names(f"{name}{f}"), nodeport, VERDICT_DATA))
        # One endpoint map per protocol: DNAT to `ip . port` needs the transport protocol
        # known, and nft 1.0.6 cannot re-read a `typeof` holding `th dport` from the kernel
        # (any later rule using the map fails with "conflicting protocols specified").
        for proto in PROTOCOLS:
            for local in (False, True):
                sets.append(
                    SetDef(
                        names.endpoints(f, proto, local=local, nodeport=False),
                        (typeof_addr(f), typeof_port(proto), typeof_numgen(2)),
                        (typeof_addr(f), typeof_port(proto)),
                    )
                )
                sets.append(
                    SetDef(
                        names.endpoints(f, proto, local=local, nodeport=True),
                        (typeof_port(proto), typeof_numgen(2)),
                        (typeof_addr(f), typeof_port(proto)),
                    )
                )
        sets.append(SetDef(names(f"masq-frontends{f}"), frontend))
        sets.append(SetDef(names(f"masq-nodeports{f}"), nodeport))
        sets.append(SetDef(names(f"cluster-frontends{f}"), frontend))
        sets.append(SetDef(names(f"firewall{f}"), frontend))
        sets.append(SetDef(names(f"firewall-allow{f}"), (*frontend, a), interval=True))
        sets.append(SetDef(names(f"hairpin{f}"), (a, a)))
        sets.append(SetDef(names(f"cluster-ips{f}"), (a,)))
        # Always there, empty when no range is known: ServiceCIDR objects come and go
        # without changing the skeleton (a change is an element diff, not a rebuild).
        sets.append(SetDef(names(f"service-cidrs{f}"), (a,), interval=True))
        if node.cluster_cidrs_of(f):
            sets.append(SetDef(names(f"cluster-cidrs{f}"), (a,), interval=True))
        if not node.nodeport_match_all(f):
            # This node's own addresses that accept NodePorts (kube-proxy's nodeport-ips):
            # addresses, never the CIDRs, or traffic routed through the node to another
            # host in them would be taken for a NodePort.
            sets.append(SetDef(names(f"nodeport-ips{f}"), (a,)))
    sets.append(record_set(names(RECORD)))
    return {s.name: s for s in sets}


def skeleton_elements(names: Names, node: NodeConfig) -> Fragment:
    frag = Fragment()
    for f in FAMILIES:
        # Interval sets: elements in the form the kernel lists them (see interval_atoms).
        for cidr in interval_atoms(node.cluster_cidrs_of(f)):
            frag.add(names(f"cluster-cidrs{f}"), (cidr,))
        for addr in node.nodeport_ips_of(f):
            frag.add(names(f"nodeport-ips{f}"), (addr,))
        for cidr in interval_atoms(node.service_cidrs_of(f)):
            frag.add(names(f"service-cidrs{f}"), (cidr,))
    return frag


def _services_chain(names: Names, node: NodeConfig, f: Family) -> Chain:
    mark = node.masquerade_mark
    fe = Key(_DADDR_PROTO_PORT, f)  # type: ignore[arg-type]
    saddr = Key(("saddr",), f)
    rules: list[Rule] = [
        (
            Lookup(fe, names(f"firewall{f}")),
            Lookup(Key((*_DADDR_PROTO_PORT, "saddr"), f), names(f"firewall-allow{f}"), True),  # type: ignore[arg-type]
            DROP,
        ),
        (Lookup(fe, names(f"masq-frontends{f}")), SetMarkBits(mark)),
    ]
    if node.cluster_cidrs_of(f):
        cidrs = names(f"cluster-cidrs{f}")
        rules += [
            (
                Lookup(fe, names(f"cluster-frontends{f}")),
                Lookup(saddr, cidrs, True),
                SetMarkBits(mark),
            ),
            (Lookup(saddr, cidrs), Vmap(fe, names(f"short-circuit{f}"))),
        ]
    rules += [
        (
            FibLocal("saddr"),
            Lookup(fe, names(f"short-circuit{f}")),
            SetMarkBits(mark),
            Vmap(fe, names(f"short-circuit{f}")),
        ),
        (Vmap(fe, names(f"frontends{f}")),),
        # What the dispatch did not take, as kube-proxy's cluster-ips check does: a port or
        # protocol a ClusterIP does not serve is refused, an address of the service ranges
        # that no Service holds is dropped (neither may leave un-NATed for the network).
        (Lookup(Key(("daddr",), f), names(f"cluster-ips{f}")), goto(names("reject"))),
        (Lookup(Key(("daddr",), f), names(f"service-cidrs{f}")), DROP),
    ]
    if not node.nodeport_match_all(f):
        rules.append(
            (Lookup(Key(("daddr",), f), names(f"nodeport-ips{f}")), goto(names(f"nodeports{f}")))
        )
    else:
        # kube-proxy's nftables mode does not serve NodePorts on loopback either: a DNATed
        # packet from 127.0.0.1 would be dropped as martian on the way to the pod.
        rules.append((FibLocal("daddr"), NotLoopback(f), goto(names(f"nodeports{f}"))))
    return Chain(names(f"services{f}"), tuple(rules))


def _nodeports_chain(names: Names, node: NodeConfig, f: Family) -> Chain:
    mark = node.masquerade_mark
    np = Key(_PROTO_PORT, f)  # type: ignore[arg-type]
    saddr = Key(("saddr",), f)
    rules: list[Rule] = [(Lookup(np, names(f"masq-nodeports{f}")), SetMarkBits(mark))]
    if node.cluster_cidrs_of(f):
        rules.append(
            (Lookup(saddr, names(f"cluster-cidrs{f}")), Vmap(np, names(f"np-short-circuit{f}")))
        )
    rules += [
        (
            FibLocal("saddr"),
            Lookup(np, names(f"np-short-circuit{f}")),
            SetMarkBits(mark),
            Vmap(np, names(f"np-short-circuit{f}")),
        ),
        (Vmap(np, names(f"nodeports{f}")),),
    ]
    return Chain(names(f"nodeports{f}"), tuple(rules))


def skeleton_chains(names: Names, node: NodeConfig) -> dict[str, Chain]:
    mark = node.masquerade_mark
    chains = [
        Chain(
            names("reject"),
            ((L4Proto("tcp"), Reject(tcp_reset=True)), (Reject(),)),
        )
    ]
    dispatch: list[Rule] = []
    postrouting: list[Rule] = [(MarkSet(mark), ClearMarkBits(mark), Masquerade())]
    for f in FAMILIES:
        chains.append(_services_chain(names, node, f))
        chains.append(_nodeports_chain(names, node, f))
        dispatch.append((NfProto(f), jump(names(f"services{f}"))))
        postrouting.append(
            (
                CtStatusDnat(),
                Lookup(Key(("saddr", "daddr"), f), names(f"hairpin{f}")),
                Masquerade(),
            )
        )
    base = [
        Chain("nat-prerouting", tuple(dispatch), Hook("nat", "prerouting", "dstnat")),
        Chain("nat-output", tuple(dispatch), Hook("nat", "output", "-100")),
        Chain("nat-postrouting", tuple(postrouting), Hook("nat", "postrouting", "srcnat")),
    ]
    chains += base
    fingerprint = hashlib.sha256()
    for c in chains:
        fingerprint.update(f"{c.name}:{c.digest}\n".encode())
    for sdef in skeleton_sets(names, node).values():
        fingerprint.update(f"{sdef.name}:{sdef.digest}\n".encode())
    chains.append(Chain(names(f"{SKELETON_MARK}{fingerprint.hexdigest()[:16]}")))
    return {c.name: c for c in chains}


# --- fragments -----------------------------------------------------------------------


def _short_hash(*parts: object) -> str:
    text = "\0".join(str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


class _FragmentBuilder:
    def __init__(self, svc: Service, names: Names, node: NodeConfig) -> None:
        self.svc = svc
        self.names = names
        self.node = node
        self.frag = Fragment()
        self._allowed: dict[Family, Firewall] = {}

    def nodeport_target(
        self, port: ServicePort, f: Family, backends: tuple[Destination, ...], *, local: bool
    ) -> Verdict:
        if self.svc.affinity_timeout:
            return goto(self._affinity_chain(port, f, backends, local=local))
        n = len(backends)
        proto, number = port.protocol.value, port.node_port or 0
        self.frag.picks.add(PickSpec(f, proto, local, True, n))
        emap = self.frag.blocks.setdefault(
            self.names.endpoints(f, proto, local=local, nodeport=True), {}
        )
        emap.setdefault((number,), block_of(backends, f))
        return goto(self.names.pick(f, proto, local=local, nodeport=True, n=n))

    def frontend_target(
        self,
        port: ServicePort,
        f: Family,
        vip: str,
        backends: tuple[Destination, ...],
        *,
        local: bool,
    ) -> Verdict:
        if self.svc.affinity_timeout:
            return goto(self._affinity_chain(port, f, backends, local=local))
        n = len(backends)
        proto, number = port.protocol.value, port.port
        self.frag.picks.add(PickSpec(f, proto, local, False, n))
        emap = self.frag.blocks.setdefault(
            self.names.endpoints(f, proto, local=local, nodeport=False), {}
        )
        emap.setdefault((vip, number), block_of(backends, f))
        return goto(self.names.pick(f, proto, local=local, nodeport=False, n=n))

    def _affinity_chain(
        self, port: ServicePort, f: Family, backends: tuple[Destination, ...], *, local: bool
    ) -> str:
        """kube-proxy's ClientIP affinity: one dynamic set of clients per endpoint.

        nft 1.0.6 cannot record "client -> endpoint" in a shared map (the endpoint is only
        known after DNAT, and the original port is not a typed key there), so this is the one
        per-Service form. Names are content hashes: a chain never changes in place, a new
        endpoint list is a new chain that the frontend element is switched to atomically.
        """
        sid = _short_hash(self.svc.id, port.name, port.protocol, local)
        timeout = self.svc.affinity_timeout
        rules: list[Rule] = []
        per_endpoint: list[Verdict] = []
        for b in backends:
            ename = self.names(f"aff{f}-{sid}-{_short_hash(b.ip, b.port, timeout)}")
            self.frag.sets[ename] = SetDef(
                ename, (addr_field(f),), flags=("dynamic", "timeout"), timeout=timeout
            )
            self.frag.chains[ename] = Chain(
                ename,
                ((L4Proto(port.protocol.value), UpdateSet(ename, f), Dnat(f, b.ip, b.port)),),
            )
            rules.append((Lookup(Key(("saddr",), f), ename), goto(ename)))
            per_endpoint.append(goto(ename))
        rules.append((NumgenVmap(tuple(per_endpoint)),))
        chain = Chain("", tuple(rules))
        name = self.names(f"aff{f}-{sid}-{chain.digest[:8]}")
        self.frag.chains[name] = Chain(name, chain.rules)
        return name

    def firewall(self, vip: str, f: Family) -> Firewall:
        """The firewall of an external frontend: source ranges apply to load-balancer IPs."""
        svc = self.svc
        if not svc.load_balancer_source_ranges or vip not in svc.load_balancer_ips:
            return None
        if f not in self._allowed:
            # Once per Service and family, whatever the number of ports and addresses.
            self._allowed[f] = self._allowed_sources(f)
        return self._allowed[f]

    def _allowed_sources(self, f: Family) -> Firewall:
        svc = self.svc
        ranges = [r for r in svc.load_balancer_source_ranges if _family_of(r) == f]
        if not ranges:
            return None  # as kube-proxy does: ranges filter their own family only
        primary = next((ip for ip in self.node.node_ips if _family_of(ip) == f), None)
        if primary is not None and _holds_any(ranges, (primary,)):
            # As kube-proxy does: when the node (its primary IP) may reach its load balancer,
            # so may the load-balancer IPs themselves. A VIP that is also a local address
            # makes the node's connection to it start from the VIP.
            ranges += [ip for ip in svc.load_balancer_ips if _family_of(ip) == f]
        return interval_atoms(ranges)

    def empty_verdict(self, sel: Selection) -> Verdict:
        return goto(self.names("reject")) if not sel.any_usable else DROP

    def add_port(self, port: ServicePort, f: Family, sel: Selection) -> None:
        svc, names, node = self.svc, self.names, self.node
        proto = port.protocol.value
        hairpin = names(f"hairpin{f}")
        for ip in sel.maybe_here:
            self.frag.add(hairpin, (ip, ip))

        def frontend(vip: str, backends: tuple[Destination, ...], *, local: bool) -> Verdict:
            if not backends:
                return self.empty_verdict(sel)
            return self.frontend_target(port, f, vip, backends, local=local)

        internal = sel.local if svc.internal_policy_local else sel.cluster
        for vip in svc.cluster_ips:
            if _family_of(vip) != f:
                continue
            key = (vip, proto, port.port)
            self.frag.add(
                names(f"frontends{f}"),
                key,
                frontend(vip, internal, local=svc.internal_policy_local),
            )
            self.frag.add(names(f"cluster-ips{f}"), (vip,))
            if node.masquerade_all:
                self.frag.add(names(f"masq-frontends{f}"), key)
            elif node.cluster_cidrs_of(f):
                self.frag.add(names(f"cluster-frontends{f}"), key)

        ext_local = svc.external_policy_local
        external = sel.local if ext_local else sel.cluster
        for vip in (*svc.external_ips, *svc.load_balancer_ips):
            if _family_of(vip) != f:
                continue
            key = (vip, proto, port.port)
            self.frag.add(names(f"frontends{f}"), key, frontend(vip, external, local=ext_local))
            # Stated for every external frontend, None when unfiltered: when Services claim
            # one address and port, the winner's firewall applies, or none. (Cluster IPs
            # state none, which keeps claims few: a cluster IP that is also another
            # Service's load-balancer IP and port would keep that Service's firewall.)
            firewalls = self.frag.firewalls.setdefault(names(f"firewall-allow{f}"), {})
            firewalls[key] = self.firewall(vip, f)
            # Local policy keeps the client address, even under masquerade-all: kube-proxy
            # applies that to cluster IPs only.
            if ext_local:
                if sel.cluster:
                    self.frag.add(
                        names(f"short-circuit{f}"), key, frontend(vip, sel.cluster, local=False)
                    )
            else:
                self.frag.add(names(f"masq-frontends{f}"), key)

        if port.node_port:
            key2 = (proto, port.node_port)

            def np_target(backends: tuple[Destination, ...], *, local: bool) -> Verdict:
                if not backends:
                    return self.empty_verdict(sel)
                return self.nodeport_target(port, f, backends, local=local)

            self.frag.add(names(f"nodeports{f}"), key2, np_target(external, local=ext_local))
            if ext_local:
                if sel.cluster:
                    self.frag.add(
                        names(f"np-short-circuit{f}"), key2, np_target(sel.cluster, local=False)
                    )
            else:
                self.frag.add(names(f"masq-nodeports{f}"), key2)


def compile_service(
    svc: Service,
    slices: Iterable[EndpointSlice],
    node: NodeConfig,
    names: Names,
) -> Fragment:
    """The fragment of one Service, given the EndpointSlices that belong to it."""
    slices = tuple(slices)
    builder = _FragmentBuilder(svc, names, node)
    for f in svc.families:
        if f not in node.families:
            continue
        for port in svc.ports:
            builder.add_port(port, f, select(port, slices, f, node))
    return builder.frag


def group_slices(
    slices: Iterable[EndpointSlice],
) -> dict[ServiceName, list[EndpointSlice]]:
    out: dict[ServiceName, list[EndpointSlice]] = {}
    for sl in slices:
        out.setdefault(sl.service, []).append(sl)
    return out


def compile_all(
    services: Mapping[ServiceName, Service],
    slices: Iterable[EndpointSlice],
    node: NodeConfig,
    names: Names,
) -> dict[ServiceName, Fragment]:
    by_service = group_slices(slices)
    return {
        sid: compile_service(svc, by_service.get(sid, ()), node, names)
        for sid, svc in sorted(services.items(), key=lambda kv: (kv[0].namespace, kv[0].name))
    }
