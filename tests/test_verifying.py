"""Comparing the kernel's table with the desired state (nftproxy.verifying), in a real kernel.

The daemon's restart and its repair of foreign changes rest on this: every difference an
operator could make to the elements is found, and nothing is reported when nothing differs.
"""

from __future__ import annotations

import pytest
from builders import NODE, build, endpoints, ep, port, service
from kernel import nft_in

from nftproxy import applying, verifying
from nftproxy.nft import open_backend
from nftproxy.proxier import Proxier
from nftproxy.ruleset.compile import Names
from nftproxy.ruleset.desired import MISSING, UNKNOWN
from nftproxy.ruleset.diff import AppliedState, ChainSummary, diff
from nftproxy.ruleset.schema import RECORD

pytestmark = pytest.mark.kernel

WEB = service("web", ports=[port(80, node_port=30080)], load_balancer_ips=("198.51.100.1",))
API = service("api", cluster_ips=("10.96.0.11",), ports=[port(81)])
SLICES = [
    endpoints("web", [ep("10.244.1.1"), ep("10.244.1.2"), ep("10.244.2.3", "node-b")]),
    endpoints("api", [ep("10.244.1.9")], target=9090),
]


def applied(netns: str):
    backend = open_backend(netns)
    ruleset = build([WEB, API], SLICES, names=Names("g1-"))
    applying.run_plan(backend, applying.make_plan(lambda names: ruleset, None))
    return backend, ruleset


def structure(backend) -> AppliedState:
    found = backend.objects()
    return AppliedState(
        sets=set(found.sets),
        maps=found.maps,
        dynamic=found.dynamic,
        chains={n: ChainSummary(r) for n, r in found.chains.items()},
        with_elements=False,
    )


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


@pytest.mark.parametrize("read", ["dump", "lookup"])
def test_every_foreign_difference_is_found_and_the_diff_repairs_it(netns, monkeypatch, read):
    if read == "lookup":
        monkeypatch.setattr(verifying, "LOOKUP_ABOVE", 0)
    backend, ruleset = applied(netns)
    assert not verifying.differences(backend, ruleset, structure(backend)).before
    damage(netns)
    scope = verifying.differences(backend, ruleset, structure(backend))
    found = {(name, key): value for name, b in scope.before.items() for key, value in b.items()}
    expected = {
        ("g1-endpoints4-tcp", ("10.96.0.10", 80, 1)): MISSING,
        ("g1-frontends4", ("10.96.0.11", "tcp", 81)): UNKNOWN,
    }
    if read == "dump":
        # Only a listing sees keys nobody meant; lookups ask for ours.
        expected[("g1-hairpin4", ("10.9.9.9", "10.9.9.9"))] = UNKNOWN
    assert found == expected
    for tx in diff(ruleset, structure(backend), scope).split():
        applying.execute(backend, tx, ruleset.sets)
    if read == "lookup":
        nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-hairpin4",
               "{ 10.9.9.9 . 10.9.9.9 }")  # fmt: skip
    assert applying.read_applied(backend) == AppliedState.of(ruleset)


def test_a_missing_set_is_all_missing_and_a_lookup_stops_at_nothing(netns, monkeypatch):
    monkeypatch.setattr(verifying, "LOOKUP_ABOVE", 0)
    backend, ruleset = applied(netns)
    nft_in(netns, "flush", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
    scope = verifying.differences(backend, ruleset, structure(backend))
    assert scope.before["g1-endpoints4-tcp"] == dict.fromkeys(
        ruleset.elements["g1-endpoints4-tcp"], MISSING
    )


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
