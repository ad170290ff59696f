"""nftables over raw netlink sockets (nftproxy.kernel.netlink): set elements written as
nfnetlink batches (all or nothing, refusals, the generation id, batches past the default
buffer, the writer's lifetime), dumps, and the commit monitor. Namespaces are created here
and deleted whatever happens (fixtures in tests/kernel/conftest.py). The encoding itself:
test_encoding.py; the benchmark of the write path: bench/netlink.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from nftproxy.kernel.encoding import Encoder, decode_key, element_key
from nftproxy.kernel.errors import NetlinkError, NftError
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.kernel.netlink import ElementWriter, dump_elements
from nftproxy.ruleset.schema import DROP, ElementKey, goto
from nftproxy.ruleset.transaction import AddElements, DeleteElements
from tests.support.elements import CHAINS, TYPES, element_count, listing, ops_text, sample_ops
from tests.support.kernel import nft_in, require_root
from tests.support.tables import applied

nft = nft_in


# --- kernel: dumps ------------------------------------------------------------------------


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


# --- kernel: the commit monitor ---------------------------------------------------------------


@pytest.mark.kernel
def test_the_commit_monitor_reports_transactions_on_our_table_and_nothing_else(netns):
    backend, _ = applied(netns)
    monitor = backend.monitor()
    try:
        nft_in(netns, "add", "table", "inet", "someone-else")  # not ours: not reported
        nft_in(netns, "-f", "-", stdin=(
            "delete element inet nftproxy g1-frontends4 { 10.96.0.11 . tcp . 81 }\n"
            "add element inet nftproxy g1-hairpin4 { 10.9.9.9 . 10.9.9.9 }\n"
        ))  # fmt: skip
        nft_in(netns, "add", "rule", "inet", "nftproxy", "g1-services4", "counter")
        seen: list = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            seen += monitor.read(0.2)
    finally:
        monitor.close()
    now = backend.generation()
    assert [(c.generation, c.sets, c.other) for c in seen] == [
        (now - 1, frozenset({"g1-frontends4", "g1-hairpin4"}), False),
        (now, frozenset(), True),
    ]
    # Each element as a dump lists it, with whether it came or went.
    (deleted,) = seen[0].elements["g1-frontends4"]
    (added,) = seen[0].elements["g1-hairpin4"]
    assert deleted[0] is False and added[0] is True
    assert added[1] in backend.set_elements("g1-hairpin4")
    assert deleted[1] not in backend.set_elements("g1-frontends4")
