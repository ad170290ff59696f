"""Reading what the kernel holds: `nft -j list table` output as an `AppliedState`."""

from __future__ import annotations

import ipaddress

from nftproxy.ruleset.diff import AppliedState, ChainSummary
from nftproxy.ruleset.schema import Atom, ElementKey, ElementValue, Verdict, is_record, network_atom

__all__ = [
    "applied_from_json",
]


def _atom(value: object) -> Atom:
    if isinstance(value, bool):
        raise ValueError(f"unexpected boolean in element: {value!r}")
    if isinstance(value, int | str):
        return value
    if isinstance(value, dict):
        if "prefix" in value:
            # The desired side's form (schema.interval_atoms), whichever way nft spells it.
            p = value["prefix"]
            return network_atom(ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False))
        if "range" in value:
            lo, hi = value["range"]
            return f"{lo}-{hi}"
    raise ValueError(f"unexpected element atom: {value!r}")


def _key(value: object) -> ElementKey:
    if isinstance(value, dict) and "concat" in value:
        return tuple(_atom(v) for v in value["concat"])
    if isinstance(value, dict) and "elem" in value:
        return _key(value["elem"]["val"])
    return (_atom(value),)


def _value(value: object) -> ElementValue:
    if isinstance(value, dict):
        for kind in ("goto", "jump"):
            if kind in value:
                return Verdict(kind, value[kind]["target"])
        for kind in ("accept", "drop", "return"):
            if kind in value:
                return Verdict(kind)  # type: ignore[arg-type]
    return _key(value)


def applied_from_json(doc: dict[str, object]) -> AppliedState:
    """Summarise `nft -j list table inet nftproxy` output."""
    state = AppliedState()
    rules: dict[str, int] = {}
    chains: list[str] = []
    items = doc.get("nftables", [])
    assert isinstance(items, list)
    for item in items:
        if "rule" in item:
            chain = item["rule"]["chain"]
            rules[chain] = rules.get(chain, 0) + 1
        elif "chain" in item:
            chains.append(item["chain"]["name"])
        elif "set" in item or "map" in item:
            s = item.get("set") or item["map"]
            name = s["name"]
            state.sets.add(name)
            if "map" in item:
                state.maps.add(name)
            flags = s.get("flags", ())
            if "timeout" in flags or "dynamic" in flags or is_record(name):
                state.dynamic.add(name)
                continue
            elems: dict[ElementKey, ElementValue] = {}
            for e in s.get("elem", ()):
                if "map" in item:
                    elems[_key(e[0])] = _value(e[1])
                else:
                    elems[_key(e)] = None
            state.elements[name] = elems
    for name in chains:
        state.chains[name] = ChainSummary(rules.get(name, 0))
    return state
