"""Writing set elements as raw nfnetlink batches (nftproxy.netlink).

The kernel tests load the same elements twice, through ElementWriter into one namespace and
through nft text into another, and require identical `nft -j` listings: that pins the byte
encoding of every set shape nftproxy uses to nft's own. Namespaces are created here and
deleted whatever happens. The benchmark of this write path is bench/netlink.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from nftproxy import applying
from nftproxy.config import NodeConfig
from nftproxy.kernel.encoding import (
    MAX_ELEMENTS_BYTES,
    ElementType,
    Encoder,
    decode_key,
    element_key,
    element_type,
)
from nftproxy.kernel.errors import NetlinkError, NftError
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.kernel.netlink import ElementWriter, dump_elements
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
from tests.support.builders import build, endpoints, ep, port, service
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


# --- namespaces --------------------------------------------------------------------------


def require_root() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "root (network namespaces and nftables need CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    elif shutil.which("ip") is None or shutil.which("nft") is None:
        missing = "the `ip` and `nft` commands (Debian packages iproute2, nftables)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run kernel tests, but this machine lacks {missing}")
    pytest.skip(f"needs {missing}")


@pytest.fixture
def make_ns(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Fresh namespaces named nftp-nl-*, each deleted by a finalizer registered as soon as
    it exists (so a failing test or fixture still removes it)."""
    require_root()

    def make() -> str:
        name = f"nftp-nl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        request.addfinalizer(
            lambda: subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        )
        return name

    return make


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


@pytest.fixture
def twins(make_ns: Callable[[], str]) -> tuple[str, str]:
    """Two namespaces holding the same empty table: one for the writer, one for nft."""
    a, b = make_ns(), make_ns()
    for ns in (a, b):
        nft(ns, "-f", "-", stdin=skeleton_text())
    return a, b


@pytest.fixture
def writer(twins: tuple[str, str]) -> Iterator[ElementWriter]:
    w = ElementWriter(twins[0])
    yield w
    w.close()


# --- elements of every shape ---------------------------------------------------------------


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
def test_a_dump_lists_every_set_shape_byte_for_byte_as_the_dump_form_encodes_it(
    twins: tuple[str, str],
) -> None:
    """What `dump_elements` returns for elements nft loaded equals what an
    Encoder(as_dumped=True) makes of them, and every key decodes to atoms that encode back
    to the same key: the daemon compares its desired state with the kernel this way."""
    from nftproxy.kernel.netns import setns

    ops = sample_ops()
    nft(twins[1], "-f", "-", stdin=ops_text(ops))
    encoder = Encoder(as_dumped=True)

    def dumps() -> dict[str, list[bytes] | None]:
        setns(twins[1])  # this worker thread only
        return {op.set: dump_elements(op.set) for op in ops} | {"none": dump_elements("none")}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        dumped = pool.submit(dumps).result()
    assert dumped.pop("none") is None
    for op in ops:
        etype = TYPES[op.set]
        listed = dumped[op.set]
        assert listed is not None
        assert sorted(listed) == sorted(encoder.elements(op.items, etype)), op.set
        values = {
            element_key(element, etype): value
            for element, (_, value) in zip(encoder.elements(op.items, etype), op.items, strict=True)
        }
        for element in listed:
            raw = element_key(element, etype)
            again = encoder.elements([(decode_key(raw, etype), values[raw])], etype)[0]
            assert again == element, (op.set, raw)


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


# --- kernel: all or nothing ------------------------------------------------------------------


def many_ops(n: int = 20_000) -> list[AddElements | DeleteElements]:
    """Enough elements for several messages in several sets."""
    eps = tuple(
        ((f"10.96.{i >> 8 & 255}.{i & 255}", "tcp", 80, i % 1000), (f"10.244.0.{i % 250}", 8080))
        for i in range(n)
    )
    vmap = tuple(((("tcp", "udp")[i % 2], i), goto(CHAINS[i % 3])) for i in range(n // 4))
    return [AddElements("t-endpoints4", eps), AddElements("t-vmap", vmap)]


@pytest.mark.kernel
@pytest.mark.parametrize("failure", ["missing-chain", "missing-set", "missing-element"])
def test_a_failing_last_element_leaves_the_table_unchanged(
    twins: tuple[str, str], writer: ElementWriter, failure: str
) -> None:
    ns = twins[0]
    writer.write([AddElements("t-port", (((1,), None),))], TYPES)
    before = listing(ns)
    ops = many_ops()
    types = dict(TYPES)
    bad: AddElements | DeleteElements
    element: ElementKey | None
    if failure == "missing-chain":
        bad = AddElements("t-vmap", ((("sctp", 1), goto("c-pick")), (("sctp", 2), goto("nope"))))
        element = ("sctp", 2)
    elif failure == "missing-set":
        types["t-nosuch"] = TYPES["t-vmap"]
        bad = AddElements("t-nosuch", ((("tcp", 3), DROP),))
        element = None
    else:
        bad = DeleteElements("t-port", ((1,), (2,)))
        element = (2,)
    ops.append(bad)
    batch = writer.encode(ops, types)
    assert len(batch.messages) > 3
    with pytest.raises(NetlinkError) as info:
        writer.write(ops, types)
    exc = info.value
    assert (exc.errno, exc.set_name, exc.element) == (errno.ENOENT, bad.set, element), str(exc)
    assert exc.kind == "not-found" and isinstance(exc, NftError)
    assert "nothing of the batch was applied" in str(exc) and bad.set in str(exc)
    if element is not None:
        assert f"{{ {' . '.join(map(str, element))}" in str(exc)
    assert listing(ns) == before
    # the writer is still usable afterwards
    writer.write(ops[:-1], types)
    assert element_count(listing(ns)) == element_count(before) + sum(
        len(op.items) for op in ops[:-1] if isinstance(op, AddElements)
    )


@pytest.mark.kernel
def test_every_failing_message_is_counted(twins: tuple[str, str], writer: ElementWriter) -> None:
    ops = [
        AddElements("t-vmap", ((("tcp", 1), goto("nope-1")),)),
        AddElements("t-port", (((1,), None),)),
        AddElements("t-bucket", (((7,), goto("nope-2")),)),
    ]
    with pytest.raises(NetlinkError) as info:
        writer.write(ops, TYPES)
    assert info.value.errors == 2
    assert info.value.element == ("tcp", 1) and info.value.set_name == "t-vmap"
    assert "1 more error in the batch" in str(info.value)
    assert element_count(listing(twins[0])) == 0


@pytest.mark.kernel
def test_a_conflicting_value_is_refused(twins: tuple[str, str], writer: ElementWriter) -> None:
    writer.write([AddElements("t-vmap", ((("tcp", 1), DROP),))], TYPES)
    with pytest.raises(NetlinkError) as info:
        writer.write([AddElements("t-vmap", ((("tcp", 1), goto("c-reject")),))], TYPES)
    assert info.value.kind == "exists"
    # adding the same element again is fine, as with `nft add element`
    writer.write([AddElements("t-vmap", ((("tcp", 1), DROP),))], TYPES)


@pytest.mark.kernel
def test_a_missing_table_is_named(make_ns: Callable[[], str]) -> None:
    with ElementWriter(make_ns()) as w, pytest.raises(NetlinkError) as info:
        w.write([AddElements("t-vmap", ((("tcp", 1), DROP),))], TYPES)
    assert info.value.errno == errno.ENOENT
    assert "table 'nftproxy'" in str(info.value)


@pytest.mark.kernel
def test_a_stale_generation_is_refused(twins: tuple[str, str], writer: ElementWriter) -> None:
    ns = twins[0]
    lib = LibNftables(ns)
    try:
        gen = lib.generation()
        writer.write([AddElements("t-vmap", ((("tcp", 1), DROP),))], TYPES, generation=gen)
        before = listing(ns)
        more = [AddElements("t-vmap", ((("tcp", 2), DROP),))]
        with pytest.raises(NetlinkError) as info:
            writer.write(more, TYPES, generation=gen)  # the write above moved it on
        assert info.value.errno == errno.ERESTART
        assert listing(ns) == before
        writer.write(more, TYPES, generation=lib.generation())
    finally:
        lib.close()


@pytest.mark.kernel
def test_a_batch_larger_than_the_default_buffer(
    twins: tuple[str, str], writer: ElementWriter
) -> None:
    n = 400_000
    eps = tuple(
        ((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "tcp", 80, i), ("10.244.0.1", 8080))
        for i in range(n)
    )
    batch = writer.encode([AddElements("t-endpoints4", eps)], TYPES)
    assert len(batch.data) > 16 << 20
    writer.send(batch)
    out = nft(twins[0], "list", "map", "inet", "nftproxy", "t-endpoints4")
    assert out.count(" : 10.244.0.1 . 8080") == n


def test_kernel_tests_skip_naming_root_or_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="root"):
        require_root()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="root"):
        require_root()


def test_a_missing_namespace_is_an_error() -> None:
    with pytest.raises(NftError, match="does not exist") as info:
        ElementWriter(f"nftp-nl-missing-{uuid.uuid4().hex[:8]}")
    assert info.value.kind == "not-found"


FINALIZED_INSIDE_SUBMIT = """
import concurrent.futures.thread as futures, gc, sys, threading
from nftproxy.kernel.backend import open_backend
from nftproxy.ruleset.schema import PORT_FIELD, SetDef
from nftproxy.ruleset.transaction import AddElements, Transaction

backend = open_backend(sys.argv[1])
# An empty batch: the backend now owns an element writer and its thread.
backend.apply(Transaction([AddElements("s", ())]), {"s": SetDef("s", (PORT_FIELD,))})

def drop_it_while_a_submit_holds_the_lock():
    global backend
    # What a collection started by an allocation inside ThreadPoolExecutor.submit sees.
    with futures._global_shutdown_lock:
        del backend
        gc.collect()

worker = threading.Thread(target=drop_it_while_a_submit_holds_the_lock, daemon=True)
worker.start()
worker.join(30)
print("stuck" if worker.is_alive() else "finalized")
"""


def test_a_backend_dropped_inside_an_executor_submit_is_finalized_without_deadlock(netns):
    # The full suite once hung for good here: the writer's finalizer submitted to its
    # thread pool from a garbage collection that ran inside another pool's submit.
    proc = subprocess.run(
        [sys.executable, "-c", FINALIZED_INSIDE_SUBMIT, netns],
        capture_output=True,
        text=True,
        timeout=60,  # a deadlock also hangs the interpreter's exit
        check=False,
    )
    assert proc.stdout.strip() == "finalized", proc.stdout + proc.stderr
