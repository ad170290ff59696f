"""Element encoding (nftproxy.kernel.encoding): the element type of every set shape, the
batch layout, the bytes of one element, errors naming the set and element; then the
encoding checked against nft's own.

The kernel tests load the same elements twice, through ElementWriter into one namespace and
through nft text into another, and require identical `nft -j` listings: that pins the byte
encoding of every set shape nftproxy uses to nft's own. Namespaces are created here and
deleted whatever happens (fixtures in tests/kernel/conftest.py).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

import pytest

from nftproxy import applying
from nftproxy.kernel.encoding import MAX_ELEMENTS_BYTES, ElementType, Encoder, element_type
from nftproxy.kernel.errors import NetlinkError
from nftproxy.kernel.netlink import ElementWriter
from nftproxy.ruleset.schema import (
    DROP,
    PORT_FIELD,
    PROTO_FIELD,
    VERDICT_DATA,
    ElementKey,
    SetDef,
    SetField,
    addr_field,
    goto,
    typeof_addr,
    typeof_numgen,
    typeof_port,
)
from nftproxy.ruleset.transaction import AddElements, DeleteElements
from tests.support.builders import build, endpoints, ep, port, service
from tests.support.elements import (
    L4PROTO,
    SKELETON,
    TYPES,
    Ops,
    element_count,
    listing,
    ops_text,
    sample_ops,
)
from tests.support.kernel import nft_in

nft = nft_in


# --- pure tests ----------------------------------------------------------------------------


def test_every_skeleton_set_but_the_interval_ones_is_writable() -> None:
    for name, sdef in SKELETON.items():
        etype = element_type(sdef)
        assert (etype is None) == (sdef.interval or bool(sdef.flags)), name
        if etype is not None:
            assert len(etype.key) == len(sdef.key), name
            if sdef.is_verdict_map:
                assert etype.is_verdict_map
            elif isinstance(sdef.data, tuple):
                assert len(etype.data) == len(sdef.data), name


@pytest.mark.parametrize(
    ("setdef", "expected"),
    [
        (
            SetDef("s", (addr_field(4), PROTO_FIELD, PORT_FIELD), VERDICT_DATA),
            ElementType(("ipv4", "proto", "port"), ("verdict",)),
        ),
        (
            SetDef(
                "s",
                (typeof_addr(4), L4PROTO, typeof_port("tcp"), typeof_numgen(2)),
                (typeof_addr(4), typeof_port("tcp")),
            ),
            ElementType(("ipv4", "proto", "port", "u32-host"), ("ipv4", "port")),
        ),
        (
            SetDef(
                "s", (typeof_port("sctp"), typeof_numgen(3)), (typeof_addr(6), typeof_port("sctp"))
            ),
            ElementType(("port", "u32-host"), ("ipv6", "port")),
        ),
        (SetDef("s", (addr_field(6), addr_field(6))), ElementType(("ipv6", "ipv6"))),
        (SetDef("s", (addr_field(4),)), ElementType(("ipv4",))),
        (SetDef("s", (PORT_FIELD,), (addr_field(6),)), ElementType(("port",), ("ipv6",))),
        (
            SetDef("s", (typeof_addr(6, "saddr"), SetField("inet_proto", "ip6 nexthdr"))),
            ElementType(("ipv6", "proto")),
        ),
        (SetDef("s", (typeof_numgen(7),), VERDICT_DATA), ElementType(("u32-host",), ("verdict",))),
        (SetDef("s", (addr_field(4),), interval=True), None),
        (SetDef("s", (addr_field(4),), flags=("dynamic", "timeout"), timeout=30), None),
    ],
)
def test_element_type_of(setdef: SetDef, expected: ElementType | None) -> None:
    assert element_type(setdef) == expected


def test_element_type_rejects_misplaced_verdicts() -> None:
    with pytest.raises(ValueError):
        ElementType(("verdict",))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ElementType(("ipv4",), ("ipv4", "verdict"))
    with pytest.raises(ValueError):
        ElementType(())


PURE = {
    "ep4": ElementType(("ipv4", "proto", "port", "u32-host"), ("ipv4", "port")),
    "ep6": ElementType(("ipv6", "proto", "port", "u32-host"), ("ipv6", "port")),
    "fe4": ElementType(("ipv4", "proto", "port"), ("verdict",)),
    "hp4": ElementType(("ipv4", "ipv4")),
}


def walk(data: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in a batch."""
    out: list[tuple[int, int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        assert length >= 16 and pos + length <= len(data)
        out.append((kind, flags, seq, bytes(data[pos + 16 : pos + length])))
        pos += (length + 3) & ~3
    return out


def test_batch_layout_and_message_split() -> None:
    """Begin, element messages each under 64 KiB (NEWSETELEM with create+ack), end."""
    long = "c" * 200
    items = tuple(
        ((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "tcp", 80), goto(f"{long}{i % 3}"))
        for i in range(3000)
    )
    ops: Ops = [AddElements("fe4", items), DeleteElements("hp4", (("1.2.3.4", "1.2.3.4"),))]
    batch = Encoder().encode(ops, PURE, seq=100)
    msgs = walk(batch.data)
    assert msgs[0][:3] == (0x10, 0x01, 100)  # NFNL_MSG_BATCH_BEGIN, request
    assert msgs[0][3][:4] == bytes((0, 0, 0, 10))  # AF_UNSPEC, v0, res_id NFNL_SUBSYS_NFTABLES
    assert msgs[-1][0] == 0x11 and msgs[-1][2] == 100 + len(msgs) - 1
    body = msgs[1:-1]
    assert len(body) == len(batch.messages) > 2
    assert [m[0] for m in body] == [0xA0C] * (len(body) - 1) + [0xA0E]
    assert all(m[1] == 0x405 for m in body[:-1]) and body[-1][1] == 0x05
    assert [m[2] for m in body] == list(range(101, 101 + len(body)))
    assert all(len(m[3]) < 65536 for m in body)
    encoder = Encoder()
    for m in batch.messages:
        assert len(m.elements(encoder)) == m.count
        assert sum(map(len, m.elements(encoder))) <= MAX_ELEMENTS_BYTES
    assert sum(m.count for m in batch.messages) == 3001 == batch.elements
    assert [m.start for m in batch.messages[:3]] == [
        0,
        batch.messages[0].count,
        sum(m.count for m in batch.messages[:2]),
    ]
    assert all(m[3][:4] == bytes((1, 0, 0, 0)) for m in body)  # NFPROTO_INET, v0, res_id 0


def test_encoding_of_one_endpoint_element() -> None:
    """The bytes nft 1.0.6 sends for `10.0.0.1 . tcp . 80 . 300 : 10.1.2.3 . 8080`
    (from `nft --debug=netlink`: 0100000a 00000006 00005000 0000012c : 0302010a 0000901f)."""
    op = AddElements("ep4", ((("10.0.0.1", "tcp", 80, 300), ("10.1.2.3", 8080)),))
    (elem,) = Encoder().encode_op(op, PURE["ep4"])[0]
    key = bytes.fromhex("0a000001 06000000 00500000") + struct.pack("=I", 300)
    assert key in elem
    assert bytes.fromhex("0a010203 1f900000") in elem
    assert len(elem) == 4 + (4 + 4 + 16) + (4 + 4 + 8)


@pytest.mark.parametrize(
    ("op", "element", "why"),
    [
        (
            AddElements("ep4", ((("10.0.0.1", "tcp", 80, 1), ("10.0.0.300", 80)),)),
            ("10.0.0.1", "tcp", 80, 1),
            "not an IPv4 address",
        ),
        (
            AddElements("ep4", ((("10.0.0.1", "tcp", 80), ("10.0.0.3", 80)),)),
            ("10.0.0.1", "tcp", 80),
            "key must be a tuple of 4",
        ),
        (
            AddElements("ep4", ((("10.0.0.1", "tcp", 80, 1, 2), ("10.0.0.3", 80)),)),
            ("10.0.0.1", "tcp", 80, 1, 2),
            "key must be a tuple of 4",
        ),
        (
            AddElements("ep6", ((("10.0.0.1", "tcp", 80, 1), ("::1", 80)),)),
            ("10.0.0.1", "tcp", 80, 1),
            "not an IPv6 address",
        ),
        (
            AddElements("fe4", ((("10.0.0.1", "tcp", 70000), DROP),)),
            ("10.0.0.1", "tcp", 70000),
            "not a port number",
        ),
        (
            AddElements("fe4", ((("10.0.0.1", "bogus", 80), DROP),)),
            ("10.0.0.1", "bogus", 80),
            "not an IP protocol",
        ),
        (
            AddElements("fe4", ((("10.0.0.1", "tcp", 80), ("1.1.1.1", 80)),)),
            ("10.0.0.1", "tcp", 80),
            "not a verdict",
        ),
        (
            AddElements("ep4", ((("10.0.0.1", "tcp", 80, -1), ("1.1.1.1", 80)),)),
            ("10.0.0.1", "tcp", 80, -1),
            "32-bit unsigned",
        ),
        (
            AddElements("hp4", ((("1.1.1.1", "1.1.1.1"), DROP),)),
            ("1.1.1.1", "1.1.1.1"),
            "no value",
        ),
        (DeleteElements("hp4", (("1.1.1.1", "::1"),)), ("1.1.1.1", "::1"), "IPv4"),
    ],
)
def test_encoding_errors_name_the_set_and_element(
    op: AddElements | DeleteElements, element: ElementKey | None, why: str
) -> None:
    good: AddElements = AddElements("ep4", ((("10.9.9.9", "udp", 53, 0), ("10.1.1.1", 53)),))
    with pytest.raises(NetlinkError) as info:
        Encoder().encode([good, op], PURE)
    assert info.value.set_name == op.set
    assert info.value.element == element
    assert info.value.errno == errno.EINVAL
    assert why in str(info.value) and "nothing was sent" in str(info.value)


def test_sets_without_type_are_refused() -> None:
    with pytest.raises(ValueError, match="cidrs"):
        Encoder().encode([AddElements("cidrs", ((("10.0.0.0/8",), None),))], PURE)


# --- kernel: same listing as nft ------------------------------------------------------------


@pytest.mark.kernel
def test_every_set_shape_lists_exactly_as_loaded_by_nft(
    twins: tuple[str, str], writer: ElementWriter
) -> None:
    ops = sample_ops()
    assert {op.set for op in ops} == set(TYPES)
    writer.write(ops, TYPES)
    nft(twins[1], "-f", "-", stdin=ops_text(ops))
    mine, theirs = listing(twins[0]), listing(twins[1])
    assert element_count(mine) == sum(len(op.items) for op in ops) > 20 * len(ops)
    assert mine == theirs


@pytest.mark.kernel
def test_deleting_elements(twins: tuple[str, str], writer: ElementWriter) -> None:
    ops = sample_ops()
    writer.write(ops, TYPES)
    nft(twins[1], "-f", "-", stdin=ops_text(ops))
    changes: list[AddElements | DeleteElements] = [
        DeleteElements(op.set, tuple(k for k, _ in op.items[::2])) for op in ops
    ]
    # a changed value, the way diff() does it: delete, then add with the new value
    key, _value = next(op for op in ops if op.set == "t-vmap").items[1]
    changes += [DeleteElements("t-vmap", (key,)), AddElements("t-vmap", ((key, DROP),))]
    writer.write(changes, TYPES)
    nft(twins[1], "-f", "-", stdin=ops_text(changes))
    after = listing(twins[0])
    assert after == listing(twins[1])
    assert element_count(after) == sum(len(op.items) - len(op.items[::2]) for op in ops)
    vmap = next(i["map"] for i in after["nftables"] if i.get("map", {}).get("name") == "t-vmap")
    assert [e[1] for e in vmap["elem"] if e[0]["concat"] == list(key)] == [{"drop": None}]


@pytest.mark.kernel
def test_a_real_cluster_loads_identically(make_ns: Callable[[], str]) -> None:
    """The generation plan of a small cluster: skeleton and chains as nft text, all
    element transactions through the writer, against the plan run entirely as text."""
    svcs = [
        service(
            "web",
            ports=[port(80, node_port=30080), port(443, name="https", node_port=30443)],
            cluster_ips=("10.96.0.10", "fd00:96::10"),
            load_balancer_ips=("198.51.100.10", "2001:db8::10"),
            load_balancer_source_ranges=("203.0.113.0/24",),
            external_policy_local=True,
        ),
        service("dns", cluster_ips=("10.96.0.53",), ports=[port(53, name="dns", proto="udp")]),
        service("sticky", cluster_ips=("10.96.0.77",), affinity_timeout=300),
        service("empty", cluster_ips=("10.96.0.99",)),
    ]
    slices = [
        endpoints(
            "web",
            [ep(f"10.244.{i % 2}.{i // 2}", "node-b" if i % 3 else "node-a") for i in range(300)],
        ),
        endpoints("sticky", [ep("10.244.0.7"), ep("10.244.1.7", "node-b")], name="http"),
        endpoints("web", [ep("fd00:244::5")], family=6),
        endpoints(
            "dns",
            [ep("10.244.0.53"), ep("10.244.1.53", "node-b")],
            name="dns",
            proto="udp",
            target=53,
        ),
    ]
    plan = applying.generation_plan(lambda names: build(svcs, slices, names=names), None, 1, "t")
    assert plan.desired is not None
    types = {n: t for n, s in plan.desired.sets.items() if (t := element_type(s)) is not None}
    a, b = make_ns(), make_ns()
    written = 0
    with ElementWriter(a) as w:
        for tx in plan.transactions:
            mine = [op for op in tx.ops if isinstance(op, AddElements) and op.set in types]
            rest = [op for op in tx.ops if op not in mine]
            if rest:
                nft(a, "-f", "-", stdin="".join(line + "\n" for op in rest for line in op.render()))
            w.write(mine, types)
            written += sum(len(op.items) for op in mine)
            nft(b, "-f", "-", stdin=str(tx))
    assert written > 300
    assert listing(a) == listing(b)
