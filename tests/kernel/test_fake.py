"""The fake kernel (nftproxy.kernel.fake.FakeBackend) refuses what the kernel refuses, all
or nothing: each refused transaction below is also sent to a real kernel in a namespace,
which must refuse it too and leave the table as it was."""

from __future__ import annotations

import copy
import errno

import pytest

from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NetlinkError, NftError, Unsupported
from nftproxy.kernel.fake import FakeBackend, FakeRefused
from nftproxy.ruleset.diff import ChainSummary
from nftproxy.ruleset.listing import applied_from_json
from nftproxy.ruleset.schema import (
    DROP,
    PORT_FIELD,
    PROTO_FIELD,
    VERDICT_DATA,
    Chain,
    Key,
    Lookup,
    SetDef,
    goto,
    jump,
)
from nftproxy.ruleset.transaction import (
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    FlushChain,
    Op,
    Transaction,
)

SETS = {
    s.name: s
    for s in (
        SetDef("ports", (PORT_FIELD,)),
        SetDef("protos", (PROTO_FIELD,)),
        SetDef("verdicts", (PORT_FIELD,), VERDICT_DATA),
    )
}
# A table with a chain jumped to by a rule, one a map element leads to, and a set a rule
# looks up.
BASE = Transaction(
    [
        AddTable(),
        *(AddSet(s) for s in SETS.values()),
        AddChain(Chain("target")),
        AddChain(Chain("mapped")),
        AddChain(Chain("caller", ((jump("target"),),))),
        AddChain(Chain("lookup", ((Lookup(Key(("l4proto",)), "protos"), DROP),))),
        AddElements("ports", (((1,), None),)),
        AddElements("verdicts", (((80,), goto("mapped")),)),
    ]
)
# Where the kernel is more lenient the fake refuses anyway (not checked here): an identical
# `add set` again, and deleting a chain that still has rules (the kernel deletes them too).
REFUSED: dict[str, list[Op]] = {
    "a set of the same name and another type": [AddSet(SetDef("ports", (PROTO_FIELD,)))],
    "a chain a rule jumps to, deleted": [DeleteChain("target")],
    "a chain a map element leads to, deleted": [DeleteChain("mapped")],
    "a set a rule looks up, deleted": [DeleteSet("protos", is_map=False)],
    "a rule jumping to a missing chain": [AddChain(Chain("lost", ((jump("nowhere"),),)))],
    "an element of a missing set": [AddElements("nope", (((2,), None),))],
    "a map element leading to a missing chain": [
        AddElements("verdicts", (((81,), goto("nowhere")),))
    ],
    "a missing element, deleted": [DeleteElements("ports", ((2,),))],
    "another value for an element": [AddElements("verdicts", (((80,), DROP),))],
    # All or nothing: what comes before the refused operation is not applied either.
    "good operations, then a refused one": [
        AddElements("ports", (((3,), None),)),
        AddChain(Chain("new")),
        DeleteSet("verdicts", is_map=True),
        DeleteChain("target"),
    ],
}


def fake_with_base() -> FakeBackend:
    fake = FakeBackend()
    fake.apply(BASE)
    return fake


@pytest.mark.parametrize("ops", REFUSED.values(), ids=REFUSED.keys())
def test_the_fake_refuses_and_keeps_its_table(ops: list[Op]) -> None:
    fake = fake_with_base()
    before, generation = copy.deepcopy(fake.state), fake.generation()
    with pytest.raises(FakeRefused):
        fake.apply(Transaction(ops))
    assert fake.state == before
    assert fake.generation() == generation  # nothing committed


@pytest.mark.kernel
@pytest.mark.parametrize("ops", REFUSED.values(), ids=REFUSED.keys())
def test_the_kernel_refuses_the_same_and_keeps_its_table(netns: str, ops: list[Op]) -> None:
    backend = open_backend(netns)
    try:
        backend.apply(BASE, SETS)
        before = backend.list_table()
        with pytest.raises(NftError):
            backend.apply(Transaction(ops), SETS)
        assert backend.list_table() == before
    finally:
        backend.close()


# The same changes, in an order both accept: what is refused above is about references.
IN_ORDER = Transaction(
    [
        FlushChain("caller"),
        DeleteChain("target"),
        DeleteElements("verdicts", ((80,),)),
        DeleteChain("mapped"),
        FlushChain("lookup"),
        DeleteSet("protos", is_map=False),
        AddElements("verdicts", (((80,), DROP),)),
    ]
)


def test_the_fake_accepts_the_same_changes_in_order() -> None:
    fake = fake_with_base()
    fake.apply(IN_ORDER)
    assert fake.state is not None
    assert fake.state.chains == {"caller": ChainSummary(0), "lookup": ChainSummary(0)}
    assert fake.state.sets == {"ports", "verdicts"}
    assert fake.state.elements["verdicts"] == {(80,): DROP}


@pytest.mark.kernel
def test_the_kernel_accepts_them_too(netns: str) -> None:
    backend = open_backend(netns)
    try:
        backend.apply(BASE, SETS)
        backend.apply(IN_ORDER, SETS)
        objects = backend.objects()
        assert objects is not None
        assert objects.chains == {"caller": 0, "lookup": 0}
        assert set(objects.sets) == {"ports", "verdicts"}
    finally:
        backend.close()


def test_a_stale_generation_id_is_refused_with_erestart() -> None:
    fake = fake_with_base()
    generation = fake.generation()
    tx = Transaction([AddElements("ports", (((4,), None),))])
    assert fake.apply(tx, SETS, generation=generation) is True  # current: accepted
    assert fake.generation() == generation + 1
    before = copy.deepcopy(fake.state)
    with pytest.raises(NetlinkError) as info:
        fake.apply(
            Transaction([AddElements("ports", (((5,), None),))]), SETS, generation=generation
        )
    assert info.value.errno == errno.ERESTART
    assert fake.state == before and fake.generation() == generation + 1


@pytest.mark.kernel
def test_the_kernel_refuses_a_stale_generation_id_with_erestart_too(netns: str) -> None:
    backend = open_backend(netns)
    try:
        backend.apply(BASE, SETS)
        generation = backend.generation()
        backend.run("add table inet someone-else")  # anyone's commit moves it on
        tx = Transaction([AddElements("ports", (((5,), None),))])
        assert backend.batches(tx, SETS)
        with pytest.raises(NetlinkError) as info:
            backend.apply(tx, SETS, generation=generation)
        assert info.value.errno == errno.ERESTART
    finally:
        backend.close()


def test_the_fake_takes_transactions_not_text() -> None:
    fake = fake_with_base()
    for call in (
        lambda: fake.run("add table inet t"),
        lambda: fake.check("add table inet t"),
        fake.list_table,
        fake.monitor,
    ):
        with pytest.raises(Unsupported):
            call()
    objects = fake.objects()
    assert objects is not None and objects.maps == {"verdicts"}
    assert objects.chains == {"target": 0, "mapped": 0, "caller": 1, "lookup": 1}


@pytest.mark.kernel
def test_the_fake_lists_sets_as_the_kernel_does(netns: str) -> None:
    # The comparisons of the sync loop read sets as netlink dumps (bytes) or nft JSON.
    fake = fake_with_base()
    backend = open_backend(netns)
    try:
        backend.apply(BASE, SETS)
        more = Transaction([AddElements("ports", (((443,), None), ((8080,), None)))])
        for kernel in (fake, backend):
            kernel.apply(more, SETS)
        for name, sdef in SETS.items():
            assert sorted(fake.set_elements(name) or ()) == sorted(backend.set_elements(name) or ())
            dumped = fake.dump_sets([name])[name].result()
            assert sorted(dumped or ()) == sorted(backend.set_elements(name) or ())
            fake_listed = applied_from_json(fake.list_set(name, is_map=sdef.is_map) or {})
            kernel_listed = applied_from_json(backend.list_set(name, is_map=sdef.is_map) or {})
            assert fake_listed.elements == kernel_listed.elements, name
        assert fake.set_elements("nope") is None and backend.set_elements("nope") is None
        assert fake.list_set("nope", is_map=False) is None
        assert backend.list_set("nope", is_map=False) is None
    finally:
        backend.close()
