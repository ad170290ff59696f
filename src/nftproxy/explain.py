"""A pure evaluator of the compiled ruleset: where can this packet go, with what chance? It
walks the same rule objects that are loaded into the kernel (not the Service model), forking
at every `numgen` with equal weights. Dynamic affinity sets are taken as empty: a client's
first connection. Property tests compare its answers with the model's endpoint sets."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from nftproxy.config import NodeConfig
from nftproxy.model import Destination
from nftproxy.ruleset.desired import Ruleset
from nftproxy.ruleset.schema import (
    Atom,
    ClearMarkBits,
    CtState,
    CtStatusDnat,
    Dnat,
    DnatMap,
    ElementKey,
    FibLocal,
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
    SetMarkBits,
    UpdateSet,
    Verdict,
    Vmap,
)

__all__ = [
    "Branch",
    "Explanation",
    "Packet",
    "Via",
    "explain",
]

Via = Literal["clusterip", "nodeport", "external", "node"]


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    port: int
    proto: str = "tcp"
    # The node itself sends it (output hook) rather than a pod or outside client.
    from_node: bool = False

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.dst).version


@dataclass(frozen=True, slots=True)
class Branch:
    probability: Fraction
    verdict: Literal["dnat", "reject", "drop", "accept"]
    backend: Destination | None
    masquerade: bool
    path: tuple[str, ...]


@dataclass(slots=True)
class Explanation:
    packet: Packet
    branches: list[Branch] = field(default_factory=list)

    def endpoints(self) -> dict[Destination, Fraction]:
        out: dict[Destination, Fraction] = {}
        for b in self.branches:
            if b.backend is not None:
                out[b.backend] = out.get(b.backend, Fraction(0)) + b.probability
        return out

    def outcomes(self) -> dict[str, Fraction]:
        out: dict[str, Fraction] = {}
        for b in self.branches:
            out[b.verdict] = out.get(b.verdict, Fraction(0)) + b.probability
        return out

    def to_json(self) -> dict[str, object]:
        p = self.packet
        merged: dict[tuple[str, str, bool], dict[str, object]] = {}
        for b in self.branches:
            target = f"{_host(b.backend.ip)}:{b.backend.port}" if b.backend else ""
            k = (b.verdict, target, b.masquerade)
            entry = merged.setdefault(
                k,
                {
                    "verdict": b.verdict,
                    "endpoint": target or None,
                    "masquerade": b.masquerade,
                    "probability": 0.0,
                    "path": list(b.path),
                },
            )
            entry["probability"] = float(entry["probability"]) + float(b.probability)  # type: ignore[arg-type]
        return {
            "packet": {
                "from": p.src,
                "to": f"{_host(p.dst)}:{p.port}",
                "protocol": p.proto,
                "hook": "output" if p.from_node else "prerouting",
            },
            "results": sorted(merged.values(), key=lambda e: str(e["endpoint"])),
        }

    def __str__(self) -> str:
        doc = self.to_json()
        pkt = doc["packet"]
        assert isinstance(pkt, dict)
        lines = [f"{pkt['protocol']} {pkt['from']} -> {pkt['to']} (enters {pkt['hook']})"]
        results = doc["results"]
        assert isinstance(results, list)
        for r in results:
            what = r["endpoint"] or _OUTCOMES.get(str(r["verdict"]), "")
            masq = ", masqueraded" if r["masquerade"] else ""
            lines.append(f"  {r['probability']:7.2%}  {r['verdict']:6} {what}{masq}")
            lines.append(f"           via {' -> '.join(r['path'])}")
        if not results:
            lines.append("  no match: the packet is not a Service's")
        return "\n".join(lines)


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


_GEN_PREFIX = re.compile(r"^g\d+-")


def _short(name: str) -> str:
    return _GEN_PREFIX.sub("", name)


@dataclass(frozen=True, slots=True)
class _State:
    prob: Fraction
    mark: int
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _End:
    """How a walk ended: "next" (go on with the next rule of this chain), "return" (back to
    the caller of this chain), or a terminal verdict."""

    state: _State
    kind: Literal["next", "return", "dnat", "reject", "drop", "accept"]
    backend: Destination | None = None


# What a user sees of each verdict that is no DNAT.
_OUTCOMES = {
    "reject": "refused at once (TCP reset / ICMP port unreachable)",
    "drop": "dropped: no answer",
    "accept": "left as it is",
}


class _Evaluator:
    def __init__(self, ruleset: Ruleset, node: NodeConfig, pkt: Packet) -> None:
        self.rs = ruleset
        self.node = node
        self.pkt = pkt
        # `fib daddr type local`: the node's addresses, as far as its config knows them.
        known = (*node.node_ips, *(node.interface_ips or ()))
        self.local = {str(ipaddress.ip_address(a)) for a in known}

    # --- packet fields ------------------------------------------------------------------

    def field(self, name: str, daddr: str, saddr: str) -> Atom:
        if name == "saddr":
            return saddr
        if name == "daddr":
            return daddr
        if name == "l4proto":
            return self.pkt.proto
        return self.pkt.port

    def key(self, key: Key, *, daddr: str | None = None, saddr: str | None = None) -> ElementKey:
        d = daddr or self.pkt.dst
        s = saddr or self.pkt.src
        return tuple(self.field(f, d, s) for f in key.fields)

    def member(self, set_name: str, key: ElementKey) -> bool:
        sdef = self.rs.sets.get(set_name)
        elems = self.rs.elements.get(set_name, {})
        if sdef is None or "dynamic" in sdef.flags:
            return False
        if not sdef.interval:
            return key in elems
        return any(_interval_match(e, key) for e in elems)

    def is_local(self, addr: str) -> bool:
        return addr in self.local

    # --- chains -------------------------------------------------------------------------

    def chain(self, name: str, st: _State) -> list[_End]:
        chain = self.rs.chains.get(name)
        st = _State(st.prob, st.mark, (*st.path, _short(name)))
        if chain is None:
            return [_End(st, "return")]
        return self.rules(chain.rules, st)

    def rules(self, rules: Iterable[Rule], st: _State) -> list[_End]:
        rules = tuple(rules)
        for i, rule in enumerate(rules):
            outcome = self.rule(rule, st)
            if outcome is None:
                continue
            ends: list[_End] = []
            for end in outcome:
                if end.kind == "next":
                    ends += self.rules(rules[i + 1 :], end.state)
                else:
                    ends.append(end)
            return ends
        return [_End(st, "return")]

    def rule(self, rule: Rule, st: _State) -> list[_End] | None:
        """None: the rule did not match (evaluation goes on with the next rule)."""
        mark = st.mark
        matched: list[str] = []  # sets the packet was found in: why a verdict applies
        for part in rule:
            match part:
                case NfProto(family=f):
                    if self.pkt.family != f:
                        return None
                case L4Proto(proto=p):
                    if self.pkt.proto != p:
                        return None
                case CtState():
                    pass
                case CtStatusDnat():
                    return None  # only meaningful in postrouting, handled there
                case FibLocal(which=w, negate=neg):
                    addr = self.pkt.src if w == "saddr" else self.pkt.dst
                    if self.is_local(addr) == neg:
                        return None
                case NotLoopback():
                    if ipaddress.ip_address(self.pkt.dst).is_loopback:
                        return None
                case MarkSet(mask=m):
                    if mark & m != m:
                        return None
                case Lookup(key=k, set=s, negate=neg):
                    if self.member(s, self.key(k)) == neg:
                        return None
                    if not neg:
                        matched.append(f"@{_short(s)}")
                case SetMarkBits(mask=m):
                    mark |= m
                case ClearMarkBits(mask=m):
                    mark ^= m
                case UpdateSet():
                    pass
                case Vmap(key=k, map=m):
                    verdict = self.rs.elements.get(m, {}).get(self.key(k))
                    if not isinstance(verdict, Verdict):
                        return None
                    path = (*st.path, f"@{_short(m)}")
                    return self.verdict(verdict, _State(st.prob, mark, path))
                case NumgenVmap(targets=targets):
                    n = len(targets)
                    ends: list[_End] = []
                    for t in targets:
                        ends += self.verdict(t, _State(st.prob / n, mark, st.path))
                    return ends
                case DnatMap(key=k, map=m):
                    if k.l4 is not None and self.pkt.proto != k.l4:
                        return None
                    base = self.key(Key(k.fields, k.family))
                    n = k.numgen or 1
                    data = self.rs.elements.get(m, {})
                    ends = []
                    misses = 0
                    for bucket in range(n):
                        value = data.get((*base, bucket) if k.numgen else base)
                        if isinstance(value, tuple):
                            backend = Destination(str(value[0]), int(value[1]))
                            path = (*st.path, f"@{_short(m)}[{bucket}]")
                            ends.append(_End(_State(st.prob / n, mark, path), "dnat", backend))
                        else:
                            misses += 1
                    if misses:
                        # A missing bucket: nft's lookup fails and the rule does not match.
                        ends.append(_End(_State(st.prob * misses / n, mark, st.path), "next"))
                    return ends
                case Dnat(ip=ip, port=port):
                    return [_End(_State(st.prob, mark, st.path), "dnat", Destination(ip, port))]
                case Reject():
                    return [_End(_State(st.prob, mark, (*st.path, "reject")), "reject")]
                case Masquerade():
                    return None
                case Verdict():
                    return self.verdict(part, _State(st.prob, mark, (*st.path, *matched)))
        # Matched, with only non-terminal statements (a mark): carry on with the next rule.
        return [_End(_State(st.prob, mark, st.path), "next")]

    def verdict(self, v: Verdict, st: _State) -> list[_End]:
        if v.kind == "drop":
            return [_End(st, "drop")]
        if v.kind == "accept":
            return [_End(st, "accept")]
        if v.kind == "return":
            return [_End(st, "return")]
        assert v.target is not None
        if v.kind == "goto":
            return self.chain(v.target, st)
        # jump: when the callee falls off its end, the caller goes on with its next rule.
        return [
            _End(e.state, "next") if e.kind == "return" else e for e in self.chain(v.target, st)
        ]


def _interval_match(element: ElementKey, key: ElementKey) -> bool:
    if len(element) != len(key):
        return False
    for e, k in zip(element, key, strict=True):
        net = _network(e) if isinstance(e, str) else None
        if net is not None:
            # A prefix, or a host written as the bare address (how the kernel lists a /32).
            addr = _address(k) if isinstance(k, str) else None
            if addr is None or addr not in net:
                return False
        elif e != k:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None  # not an address: a protocol name in a concatenation


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def explain(ruleset: Ruleset, node: NodeConfig, pkt: Packet) -> Explanation:
    ev = _Evaluator(ruleset, node, pkt)
    hook = "nat-output" if pkt.from_node else "nat-prerouting"
    start = _State(Fraction(1), 0, ())
    out = Explanation(pkt)
    for end in ev.chain(hook, start):
        path = end.state.path
        if end.kind == "dnat" and end.backend is not None:
            masq = _masquerade(ev, end.state.mark, end.backend)
            out.branches.append(Branch(end.state.prob, "dnat", end.backend, masq, path))
        elif end.kind in ("reject", "drop"):
            out.branches.append(Branch(end.state.prob, end.kind, None, False, path))
        elif end.kind in ("return", "accept") and any(p.startswith("@") for p in path):
            # Reached a Service's maps but no DNAT happened: the packet goes on unchanged.
            out.branches.append(Branch(end.state.prob, "accept", None, False, path))
    return out


def _masquerade(ev: _Evaluator, mark: int, backend: Destination) -> bool:
    """nat-postrouting: our mark bit, or a pod reaching itself (hairpin)."""
    post = ev.rs.chains.get("nat-postrouting")
    if post is None:
        return False
    for rule in post.rules:
        ok = True
        masq = False
        for part in rule:
            match part:
                case MarkSet(mask=m):
                    ok = ok and (mark & m == m)
                case CtStatusDnat():
                    pass
                case Lookup(key=k, set=s, negate=neg):
                    key = ev.key(k, daddr=backend.ip)
                    ok = ok and (ev.member(s, key) != neg)
                case Masquerade():
                    masq = True
                case _:
                    pass
        if ok and masq:
            return True
    return False
