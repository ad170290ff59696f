"""The ruleset as data: sets, maps, chains, rules and elements as small frozen values.

Every object renders its own nft text, and the same objects are what `explain` interprets,
so what is evaluated is exactly what is loaded. Rules are sequences of typed parts (matches,
statements, verdicts) rather than free text: references to chains and sets stay structured.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from nftproxy.model import Family

__all__ = [
    "DROP",
    "FAMILY",
    "PORT_FIELD",
    "PROTO_FIELD",
    "RECORD",
    "SKELETON_MARK",
    "TABLE",
    "VERDICT_DATA",
    "Atom",
    "Chain",
    "ClearMarkBits",
    "CtState",
    "CtStatusDnat",
    "Dnat",
    "DnatMap",
    "ElementKey",
    "ElementValue",
    "FibLocal",
    "FieldType",
    "Hook",
    "Key",
    "L4Proto",
    "Lookup",
    "MarkSet",
    "Masquerade",
    "NfProto",
    "NotLoopback",
    "NumgenVmap",
    "Part",
    "Reject",
    "Rule",
    "SetData",
    "SetDef",
    "SetField",
    "SetMarkBits",
    "UpdateSet",
    "Verdict",
    "Vmap",
    "addr_field",
    "goto",
    "interval_atoms",
    "is_record",
    "jump",
    "network_atom",
    "record_set",
    "render_rule",
    "typeof_addr",
    "typeof_numgen",
    "typeof_port",
]

TABLE = "nftproxy"
FAMILY = "inet"

# Chains are immutable by name: per-Service and pick chains carry their content in their
# name, and the skeleton is fingerprinted by one empty marker chain "<gen>skeleton-<digest>"
# (nft 1.0.6 shows no comments in JSON listings, so names carry what must be verified).
SKELETON_MARK = "skeleton-"
# The set "<gen>record" holds one element the daemon writes after its commits: a digest of
# the desired state and the generation id that commit led to. A restarted daemon whose
# inputs give the same digest, finding the generation id unchanged (nobody committed
# since), knows the table is right without listing it.
RECORD = "record"


def is_record(set_name: str) -> bool:
    return set_name.partition("-")[2] == RECORD


Atom: TypeAlias = str | int
ElementKey: TypeAlias = tuple[Atom, ...]

_FIELD_TEXT: dict[str, str] = {
    "l4proto": "meta l4proto",
    "dport": "th dport",
}


def _ip(family: Family) -> str:
    return "ip" if family == 4 else "ip6"


@dataclass(frozen=True, slots=True)
class Key:
    """A concatenation of packet fields, optionally ending in `numgen random mod N`."""

    fields: tuple[Literal["saddr", "daddr", "l4proto", "dport"], ...]
    family: Family = 4
    numgen: int = 0
    # A transport protocol for `dport` (`tcp dport`): the key then also matches only that
    # protocol. None means `th dport`, any protocol with ports.
    l4: str | None = None

    def _field(self, f: str) -> str:
        if f in ("saddr", "daddr"):
            return f"{_ip(self.family)} {f}"
        if f == "dport" and self.l4:
            return f"{self.l4} dport"
        return _FIELD_TEXT[f]

    def render(self) -> str:
        parts = [self._field(f) for f in self.fields]
        if self.numgen:
            parts.append(f"numgen random mod {self.numgen}")
        return " . ".join(parts)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["goto", "jump", "accept", "drop", "return"]
    target: str | None = None

    def render(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


def goto(chain: str) -> Verdict:
    return Verdict("goto", chain)


def jump(chain: str) -> Verdict:
    return Verdict("jump", chain)


DROP = Verdict("drop")


# --- matches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CtState:
    state: Literal["new"] = "new"

    def render(self) -> str:
        return f"ct state {self.state}"


@dataclass(frozen=True, slots=True)
class CtStatusDnat:
    def render(self) -> str:
        return "ct status dnat"


@dataclass(frozen=True, slots=True)
class FibLocal:
    """The address is one of this host's (`fib ... type local`)."""

    which: Literal["saddr", "daddr"]
    negate: bool = False

    def render(self) -> str:
        op = "!= " if self.negate else ""
        return f"fib {self.which} type {op}local"


@dataclass(frozen=True, slots=True)
class NotLoopback:
    """The destination is not a loopback address (NodePorts are not served there)."""

    family: Family

    def render(self) -> str:
        return "ip daddr != 127.0.0.0/8" if self.family == 4 else "ip6 daddr != ::1"


@dataclass(frozen=True, slots=True)
class MarkSet:
    """Packet mark has `mask` bits set."""

    mask: int

    def render(self) -> str:
        return f"meta mark & {self.mask:#010x} == {self.mask:#010x}"


@dataclass(frozen=True, slots=True)
class L4Proto:
    proto: str

    def render(self) -> str:
        return f"meta l4proto {self.proto}"


@dataclass(frozen=True, slots=True)
class NfProto:
    family: Family

    def render(self) -> str:
        return f"meta nfproto ipv{self.family}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """`key @set` (or `!=`): membership of packet fields in a named set."""

    key: Key
    set: str
    negate: bool = False

    def render(self) -> str:
        op = "!= " if self.negate else ""
        return f"{self.key.render()} {op}@{self.set}"


# --- statements ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetMarkBits:
    mask: int

    def render(self) -> str:
        return f"meta mark set meta mark | {self.mask:#010x}"


@dataclass(frozen=True, slots=True)
class ClearMarkBits:
    """Clears bits known to be set (callers match them first), so xor is a clear."""

    mask: int

    def render(self) -> str:
        return f"meta mark set meta mark ^ {self.mask:#010x}"


@dataclass(frozen=True, slots=True)
class Vmap:
    key: Key
    map: str

    def render(self) -> str:
        return f"{self.key.render()} vmap @{self.map}"


@dataclass(frozen=True, slots=True)
class NumgenVmap:
    """Spread over `targets` uniformly: one anonymous verdict map with N entries."""

    targets: tuple[Verdict, ...]

    def render(self) -> str:
        body = ", ".join(f"{i} : {v.render()}" for i, v in enumerate(self.targets))
        return f"numgen random mod {len(self.targets)} vmap {{ {body} }}"


@dataclass(frozen=True, slots=True)
class DnatMap:
    """DNAT to the address and port found by looking `key` up in a data map."""

    family: Family
    key: Key
    map: str

    def render(self) -> str:
        return f"dnat {_ip(self.family)} to {self.key.render()} map @{self.map}"


@dataclass(frozen=True, slots=True)
class Dnat:
    family: Family
    ip: str
    port: int

    def render(self) -> str:
        host = self.ip if self.family == 4 else f"[{self.ip}]"
        return f"dnat {_ip(self.family)} to {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpdateSet:
    """Add or refresh the packet's source address in a dynamic set."""

    set: str
    family: Family

    def render(self) -> str:
        return f"update @{self.set} {{ {_ip(self.family)} saddr }}"


@dataclass(frozen=True, slots=True)
class Masquerade:
    def render(self) -> str:
        return "masquerade fully-random"


@dataclass(frozen=True, slots=True)
class Reject:
    """TCP gets a reset, anything else ICMP(v6) port unreachable: refused at once."""

    tcp_reset: bool = False

    def render(self) -> str:
        return "reject with tcp reset" if self.tcp_reset else "reject"


Part: TypeAlias = (
    CtState
    | CtStatusDnat
    | FibLocal
    | NotLoopback
    | MarkSet
    | L4Proto
    | NfProto
    | Lookup
    | SetMarkBits
    | ClearMarkBits
    | Vmap
    | NumgenVmap
    | DnatMap
    | Dnat
    | UpdateSet
    | Masquerade
    | Reject
    | Verdict
)
Rule: TypeAlias = tuple[Part, ...]


def render_rule(rule: Rule) -> str:
    return " ".join(part.render() for part in rule)


# --- objects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hook:
    type: Literal["filter", "nat"]
    hook: Literal["prerouting", "input", "forward", "output", "postrouting"]
    priority: str


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    hook: Hook | None = None
    comment: str = ""

    @property
    def digest(self) -> str:
        """Identifies the chain's content; stored in the kernel as its comment."""
        text = "\n".join(render_rule(r) for r in self.rules)
        if self.hook:
            text = f"{self.hook}\n{text}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


FieldType: TypeAlias = Literal["ipv4_addr", "ipv6_addr", "inet_proto", "inet_service", "integer"]


@dataclass(frozen=True, slots=True)
class SetField:
    """One field of a set's key or of a map's value: its data type and, in a `typeof`
    declaration, the packet expression nft takes the type from (`ip daddr`, `tcp dport`,
    `numgen random mod 2`: an `integer` of 32 bits in host order)."""

    type: FieldType
    expr: str = ""

    def render(self) -> str:
        return self.expr or self.type


PROTO_FIELD = SetField("inet_proto")
PORT_FIELD = SetField("inet_service")


def addr_field(family: Family) -> SetField:
    return SetField("ipv4_addr" if family == 4 else "ipv6_addr")


def typeof_addr(family: Family, which: Literal["saddr", "daddr"] = "daddr") -> SetField:
    return SetField("ipv4_addr" if family == 4 else "ipv6_addr", f"{_ip(family)} {which}")


def typeof_port(proto: str) -> SetField:
    return SetField("inet_service", f"{proto} dport")


def typeof_numgen(modulus: int) -> SetField:
    return SetField("integer", f"numgen random mod {modulus}")


# What a verdict map maps to.
VERDICT_DATA: Final = "verdict"
SetData: TypeAlias = tuple[SetField, ...] | Literal["verdict"] | None


@dataclass(frozen=True, slots=True)
class SetDef:
    """A named set or map: its key's fields and (for a map) its value's, typed."""

    name: str
    key: tuple[SetField, ...]
    data: SetData = None
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str = ""
    interval: bool = field(default=False)
    # The daemon's record of what it wrote (see RECORD), not part of the desired state.
    record: bool = False

    def __post_init__(self) -> None:
        fields = (*self.key, *(self.data if isinstance(self.data, tuple) else ()))
        if not self.key or len({bool(f.expr) for f in fields}) > 1:
            raise ValueError(f"set {self.name}: a key, every field typed one way")
        if any(f.type == "integer" and not f.expr for f in fields):
            raise ValueError(f"set {self.name}: an integer field needs its expression")

    @property
    def typeof(self) -> bool:
        """Declared by packet expressions (`typeof`) rather than type names (`type`)."""
        return bool(self.key[0].expr)

    @property
    def fixed_size(self) -> bool:
        """Whether each element is fixed-size key (and value) bytes: no intervals, flags
        or timeouts. Only those go to the kernel as netlink batches, the rest as nft text."""
        return not self.interval and not self.flags and self.timeout is None

    @property
    def is_map(self) -> bool:
        return self.data is not None

    @property
    def compared(self) -> bool:
        """Whether its elements are ours to diff: not for sets the kernel fills (session
        affinity's clients) nor for the record."""
        return not self.record and "dynamic" not in self.flags

    @property
    def is_verdict_map(self) -> bool:
        return self.data == VERDICT_DATA

    def spec(self) -> str:
        clause = "typeof" if self.typeof else "type"
        text = f"{clause} {_fields_text(self.key)}"
        if self.data is not None:
            text += f" : {self.data if isinstance(self.data, str) else _fields_text(self.data)}"
        parts = [text]
        flags = (*self.flags, "interval") if self.interval else self.flags
        if flags:
            parts.append("flags " + ",".join(flags))
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s")
        if self.comment:
            parts.append(f'comment "{self.comment}"')
        return "; ".join(parts)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.spec().encode()).hexdigest()[:16]


def _fields_text(fields: tuple[SetField, ...]) -> str:
    return " . ".join(f.render() for f in fields)


ElementValue: TypeAlias = tuple[Atom, ...] | Verdict | None


def record_set(name: str) -> SetDef:
    """The set that holds the daemon's record (see RECORD): one element, 1 : <digest as an
    IPv6 address> . <generation id as an IPv4 address>."""
    return SetDef(
        name,
        (PORT_FIELD,),
        (addr_field(6), addr_field(4)),
        comment="nftproxy: digest of the desired state . generation id after writing it",
        record=True,
    )


# --- interval elements -------------------------------------------------------------------


def network_atom(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """One prefix as nft 1.0.6 lists it in JSON: a host prefix (/32, /128) as the bare
    address, anything else as `address/length`, the address spelled by inet_ntop as nft
    does (`::ffff:0.0.0.0/96`, where `ipaddress` says `::ffff:0:0/96`)."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    addr = socket.inet_ntop(family, net.network_address.packed)
    return addr if net.prefixlen == net.max_prefixlen else f"{addr}/{net.prefixlen}"


def interval_atoms(cidrs: Iterable[str]) -> tuple[str, ...]:
    """CIDRs as one interval field holds them: the form `diff` must see on both sides.

    The kernel refuses overlapping intervals (nft: "conflicting intervals specified",
    "interval overlaps with an existing one"; a concatenated set: "File exists"), so nested
    and duplicate prefixes collapse into the larger one, and adjacent prefixes into the
    prefix they make (10.0.0.0/24 + 10.0.1.0/24 is 10.0.0.0/23). Adjacent prefixes that make
    none stay apart: the kernel keeps them as added and nft lists them so. IPv4 first,
    each family in address order.
    """
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return (
        *(network_atom(n) for n in ipaddress.collapse_addresses(v4)),
        *(network_atom(n) for n in ipaddress.collapse_addresses(v6)),
    )
