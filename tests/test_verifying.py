"""Comparing the kernel's table with the desired state (nftproxy.verifying), in a real kernel.

The daemon's restart and its repair of foreign changes rest on this: every difference an
operator could make to the elements is found, and nothing is reported when nothing differs.
"""

from __future__ import annotations

import re
import time

import pytest

from nftproxy import applying, verifying
from nftproxy.kernel.backend import open_backend
from nftproxy.proxier import Proxier
from nftproxy.ruleset.compile import Names
from nftproxy.ruleset.desired import MISSING, UNKNOWN
from nftproxy.ruleset.diff import AppliedState, diff
from nftproxy.ruleset.schema import RECORD
from tests.support.builders import NODE, build, endpoints, ep
from tests.support.kernel import nft_in
from tests.support.tables import API, SLICES, WEB, applied

pytestmark = pytest.mark.kernel


def structure(backend) -> AppliedState:
    found = verifying.structure(backend)
    assert found is not None
    return found


def damage(netns: str) -> None:
    """A deleted element, a changed one and an added one, in maps and plain sets."""
    nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-endpoints4-tcp",
           "{ 10.96.0.10 . 80 . 1 }")  # fmt: skip
    nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-frontends4",
           "{ 10.96.0.11 . tcp . 81 }")  # fmt: skip
    nft_in(netns, "add", "element", "inet", "nftproxy", "g1-frontends4",
           "{ 10.96.0.11 . tcp . 81 : goto g1-reject }")  # fmt: skip
    nft_in(netns, "add", "element", "inet", "nftproxy", "g1-hairpin4",
           "{ 10.9.9.9 . 10.9.9.9 }")  # fmt: skip


def test_every_foreign_difference_is_found_and_the_diff_repairs_it(netns):
    backend, ruleset = applied(netns)
    assert not verifying.differences(backend, ruleset, structure(backend)).before
    damage(netns)
    scope = verifying.differences(backend, ruleset, structure(backend))
    found = {(name, key): value for name, b in scope.before.items() for key, value in b.items()}
    assert found == {
        ("g1-endpoints4-tcp", ("10.96.0.10", 80, 1)): MISSING,
        ("g1-frontends4", ("10.96.0.11", "tcp", 81)): UNKNOWN,
        ("g1-hairpin4", ("10.9.9.9", "10.9.9.9")): UNKNOWN,
    }
    for tx in diff(ruleset, structure(backend), scope).split():
        backend.apply(tx, ruleset.sets)
    assert applying.read_applied(backend) == AppliedState.of(ruleset)


def test_dumps_started_before_the_comparison_are_used_and_a_flushed_map_is_all_missing(netns):
    backend, ruleset = applied(netns)
    nft_in(netns, "flush", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
    dumps = backend.dump_sets(verifying.dumped_sets(structure(backend)))
    assert "g1-endpoints4-tcp" in dumps and "g1-record" not in dumps
    scope = verifying.differences(backend, ruleset, structure(backend), dumps)
    assert scope.before == {
        "g1-endpoints4-tcp": dict.fromkeys(ruleset.elements["g1-endpoints4-tcp"], MISSING)
    }


def proxier_on(netns: str, slices=SLICES) -> Proxier:
    proxier = Proxier(open_backend(netns), NODE)
    proxier.replace_all({WEB.id: WEB, API.id: API}, {(s.namespace, s.name): s for s in slices})
    return proxier


def test_a_restart_trusts_the_record_only_while_nobody_committed_since(netns, monkeypatch):
    first = proxier_on(netns)
    first.sync()
    compared: list[int] = []
    real = verifying.differences

    def counted(*args):
        compared.append(1)
        return real(*args)

    monkeypatch.setattr(verifying, "differences", counted)
    kernel = open_backend(netns)
    committed = kernel.generation()
    # The record vouches for the table: no comparison, no commit.
    assert proxier_on(netns).sync().mode == "noop"
    assert compared == [] and kernel.generation() == committed
    # Someone committed (to another table): the record no longer vouches; compared.
    nft_in(netns, "add", "table", "inet", "other")
    assert proxier_on(netns).sync().mode == "noop"
    assert compared == [1]
    # Changed inputs while no daemon ran: their digest differs; compared, then changed.
    moved = [endpoints("web", [ep("10.244.1.1")]), SLICES[1]]
    assert proxier_on(netns, moved).sync().mode == "incremental"
    assert compared == [1, 1]
    expected = build([WEB, API], moved, names=Names("g1-"))
    assert applying.read_applied(kernel) == AppliedState.of(expected)
    # That sync wrote a new record: the next restart trusts it again.
    assert proxier_on(netns, moved).sync().mode == "noop"
    assert compared == [1, 1]


def test_the_record_is_one_element_an_operator_can_read(netns):
    proxier_on(netns).sync()
    listing = nft_in(netns, "list", "map", "inet", "nftproxy", f"g1-{RECORD}")
    assert "digest of the desired state" in listing and "elements = { 1 : " in listing


# --- the loop, woken by the commit monitor --------------------------------------------------


def test_the_loop_repairs_what_others_change_and_ignores_other_tables(netns, monkeypatch):
    import threading

    proxier = proxier_on(netns)
    proxier.sync()
    compared: list[object] = []
    real = verifying.differences

    def counted(*args, **kw):
        compared.append(kw.get("only"))
        return real(*args, **kw)

    monkeypatch.setattr(verifying, "differences", counted)
    stop = threading.Event()
    threads = [
        threading.Thread(target=proxier.run, args=(stop,), kwargs={"tick": 0.05}),
        threading.Thread(target=proxier.watch_commits, args=(stop,)),
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: proxier._monitoring, "the monitor")
        for i in range(20):  # a busy CNI: commits, but none to our table
            nft_in(netns, "add", "table", "inet", f"cni-{i % 2}")
        # Our own changes are not someone else's.
        proxier.update_slice(("default", "web-4"), endpoints("web", [ep("10.244.1.8")]))
        wait_until(lambda: proxier.stats.syncs >= 2, "our sync")
        time.sleep(0.5)
        assert compared == []
        nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-nodeports4",
               "{ tcp . 30080 }")  # fmt: skip
        wait_until(lambda: "tcp . 30080" in nodeports(netns), "the repair")
        # Repaired from what the notification said: no set was listed to find it.
        assert compared == [set()]
        nft_in(netns, "flush", "map", "inet", "nftproxy", "g1-nodeports4")
        wait_until(lambda: "tcp . 30080" in nodeports(netns), "the second repair")
        assert applying.read_applied(proxier.backend) == AppliedState.of(proxier.ruleset)
        # A rule of ours replaced by another (the same number of rules): a new generation.
        listing = nft_in(netns, "-a", "list", "chain", "inet", "nftproxy", "g1-services4")
        handle = re.findall(r"# handle (\d+)", listing)[-1]
        nft_in(netns, "-f", "-", stdin=(
            f"delete rule inet nftproxy g1-services4 handle {handle}\n"
            "add rule inet nftproxy g1-services4 counter\n"
        ))  # fmt: skip
        wait_until(lambda: "g2-services4" in nft_in(netns, "list", "chains"), "a new generation")
        wait_until(lambda: proxier.stats.full_syncs >= 2, "the rebuild")
        assert "g1-services4" not in nft_in(netns, "list", "chains")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def nodeports(netns: str) -> str:
    return nft_in(netns, "list", "map", "inet", "nftproxy", "g1-nodeports4")


def wait_until(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)
