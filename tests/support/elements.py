"""Set shapes and sample elements shared by the element-writer tests
(tests/kernel/test_encoding.py, test_netlink.py): the skeleton's sets and shapes beyond
them, values that expose byte-order and padding mistakes, the same elements as nft text,
and a listing that compares across namespaces."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from nftproxy.config import NodeConfig
from nftproxy.kernel.encoding import element_type
from nftproxy.ruleset.compile import Names, skeleton_sets
from nftproxy.ruleset.schema import (
    DROP,
    PORT_FIELD,
    PROTO_FIELD,
    VERDICT_DATA,
    Atom,
    ElementKey,
    ElementValue,
    SetDef,
    SetField,
    Verdict,
    addr_field,
    goto,
    jump,
    typeof_addr,
    typeof_numgen,
    typeof_port,
)
from nftproxy.ruleset.transaction import AddElements, AddSet, AddTable, DeleteElements
from tests.support.kernel import nft_in

L4PROTO = SetField("inet_proto", "meta l4proto")
NODE = NodeConfig(cluster_cidrs=("10.244.0.0/16", "fd00:244::/64"))
SKELETON = skeleton_sets(Names(), NODE)
# Shapes beyond the skeleton's: the endpoint map keyed by protocol (ipv4 . proto . port .
# bucket), and single-field keys and values, which are not padded to 4 bytes.
EXTRA = {
    s.name: s
    for s in (
        SetDef(
            "t-endpoints4",
            (typeof_addr(4), L4PROTO, typeof_port("tcp"), typeof_numgen(2)),
            (typeof_addr(4), typeof_port("tcp")),
        ),
        SetDef(
            "t-endpoints6",
            (typeof_addr(6), L4PROTO, typeof_port("udp"), typeof_numgen(2)),
            (typeof_addr(6), typeof_port("udp")),
        ),
        SetDef("t-vmap", (PROTO_FIELD, PORT_FIELD), VERDICT_DATA),
        SetDef("t-bucket", (typeof_numgen(2),), VERDICT_DATA),
        SetDef("t-port", (PORT_FIELD,)),
        SetDef("t-proto", (PROTO_FIELD,)),
        SetDef("t-addr6", (addr_field(6),)),
        SetDef("t-port-to-addr", (PORT_FIELD,), (addr_field(4),)),
        SetDef("t-addr-to-proto", (addr_field(6),), (PROTO_FIELD,)),
    )
}
SETS = {**SKELETON, **EXTRA}
TYPES = {name: t for name, s in SETS.items() if (t := element_type(s)) is not None}
CHAINS = ("c-pick", "c-reject", "c-a-chain-with-a-rather-long-name-" * 7)
VERDICTS: tuple[Verdict, ...] = (
    goto(CHAINS[0]),
    goto(CHAINS[2]),
    jump(CHAINS[1]),
    DROP,
    Verdict("accept"),
    Verdict("return"),
)
# Values that expose byte-order and padding mistakes: ports and buckets > 255, > 65535.
SAMPLES: dict[str, tuple[Atom, ...]] = {
    "ipv4": ("10.96.0.10", "198.51.100.255", "1.2.3.4", "0.0.0.0"),
    "ipv6": ("fd00:96::10", "2001:db8::ffff:1", "::1", "::ffff:1.2.3.4"),
    "proto": ("tcp", "udp", "sctp", 1, 58),
    "port": (1, 53, 443, 30080, 65535, 256),
    "u32-host": (0, 1, 255, 256, 300, 65536 + 7, 2**32 - 1),
}

Ops = Sequence[AddElements | DeleteElements]

nft = nft_in


def skeleton_text() -> str:
    lines = [*AddTable().render()]
    for sdef in SETS.values():
        lines += AddSet(sdef).render()
    lines += [f"add chain inet nftproxy {c}" for c in CHAINS]
    return "\n".join(lines) + "\n"


def ops_text(ops: Ops) -> str:
    return "".join(line + "\n" for op in ops for line in op.render())


def listing(netns: str) -> Any:
    """`nft -j list table inet nftproxy`, without handles and with elements sorted (the
    kernel's hash order differs between namespaces: hash seeds are random)."""
    doc = json.loads(nft(netns, "-j", "list", "table", "inet", "nftproxy"))

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: clean(v) for k, v in node.items() if k != "handle"}
            if isinstance(out.get("elem"), list):
                out["elem"] = sorted(out["elem"], key=lambda e: json.dumps(e, sort_keys=True))
            return out
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(doc)


def element_count(doc: Any) -> int:
    return sum(
        len(item.get("map", item.get("set", {})).get("elem", [])) for item in doc["nftables"]
    )


def sample_ops(n: int = 60) -> list[AddElements]:
    """Up to n elements for every writable set, drawn from SAMPLES (deterministically)."""
    out = []
    for name, etype in sorted(TYPES.items()):
        rng = random.Random(name)
        items: dict[ElementKey, ElementValue] = {}
        for _ in range(n):
            key = tuple(rng.choice(SAMPLES[k]) for k in etype.key)
            value: ElementValue = None
            if etype.is_verdict_map:
                value = rng.choice(VERDICTS)
            elif etype.data:
                value = tuple(rng.choice(SAMPLES[k]) for k in etype.data)
            items.setdefault(key, value)
        out.append(AddElements(name, tuple(items.items())))
    return out
