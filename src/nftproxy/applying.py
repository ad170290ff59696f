"""Bringing a namespace's `nftproxy` table to a desired ruleset, atomically at every step:
`make_plan` picks nothing, one incremental transaction, or a new generation built beside
the old one and flipped to (docs/ruleset.md, "Generations"); `run_plan` runs a plan and
removes a half-built generation when a step fails."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from nftproxy.kernel.backend import Backend
from nftproxy.ruleset.compile import BASE_CHAINS, Names
from nftproxy.ruleset.desired import Blocks, Elements, Ruleset, Scope
from nftproxy.ruleset.diff import AppliedState, SkeletonMismatch, check_skeleton, diff
from nftproxy.ruleset.listing import applied_from_json
from nftproxy.ruleset.schema import ElementKey, SetDef
from nftproxy.ruleset.transaction import (
    AddChain,
    AddElements,
    AddRules,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
    Op,
    Transaction,
    chains_in_order,
)

__all__ = [
    "CHUNK",
    "MAX_INCREMENTAL",
    "ApplyResult",
    "Build",
    "Compare",
    "ElementsLater",
    "KeepRefused",
    "Plan",
    "Run",
    "cleanup",
    "describe",
    "generation_plan",
    "generations",
    "keeping",
    "make_plan",
    "names_for",
    "read_applied",
    "run_plan",
]

Build = Callable[[Names], Ruleset]
# The kernel's differences from a desired ruleset (see nftproxy.verifying.differences).
Compare = Callable[[Ruleset], Scope]

# Elements per transaction while building a generation: large enough that the kernel's
# per-transaction cost is amortised, small enough that no single commit stalls the netlink
# socket. A chunk's operations and messages exist only while it runs, so this is also the
# build's memory peak: larger chunks took more memory and were no faster (bench/memory.py,
# docs/benchmarks.md).
CHUNK = 10_000

# The largest incremental transaction; a bigger change builds a new generation instead.
MAX_INCREMENTAL = 50_000

_GEN = re.compile(r"^g(\d+)-")


def generations(applied: AppliedState) -> set[int]:
    gens = set()
    for name in (*applied.sets, *applied.chains):
        m = _GEN.match(name)
        if m:
            gens.add(int(m.group(1)))
    return gens


def names_for(gen: int) -> Names:
    return Names(f"g{gen}-")


@dataclass(slots=True)
class Plan:
    """The transactions to run, in order, and why."""

    mode: str  # "noop", "incremental" or "generation"
    generation: int
    transactions: list[Transaction] = field(default_factory=list)
    reason: str = ""
    desired: Ruleset | None = None
    # Deletions left out because the inputs are incomplete (see keeping).
    kept: int = 0

    def __str__(self) -> str:
        parts = [f"# {describe(self.mode, self.generation, self.size(), self.reason)}\n"]
        for i, tx in enumerate(self.transactions, 1):
            if len(self.transactions) > 1:
                parts.append(f"# transaction {i}/{len(self.transactions)}\n")
            parts.append(str(tx))
        return "".join(parts)

    def size(self) -> int:
        return sum(tx.size() for tx in self.transactions)


def describe(mode: str, generation: int, changes: int, reason: str = "") -> str:
    """One line on what a plan does, for logs and the CLI: each fact said once."""
    why = f" ({reason})" if reason else ""
    if mode == "noop":
        return f"noop: generation {generation} holds the desired state"
    if mode == "generation":
        return f"generation {generation} built{why}, {changes} changes"
    return f"{mode}{why}: {changes} changes to generation {generation}"


class ElementsLater(Transaction):
    """Elements of a generation build, turned into a transaction only when it runs.

    Holding every (key, value) pair of a large table at once would be a second copy of
    its elements: a plan keeps only which keys (or endpoint-map frontends) each chunk
    covers, and `concrete()` builds one chunk's operations at a time. The ruleset must not
    change between planning and running (the sync loop holds it still).
    """

    __slots__ = ("_count", "_parts")

    def __init__(self) -> None:
        self._parts: list[tuple[str, Elements, list[ElementKey]]] = []
        self._count = 0

    def add(self, set_name: str, elems: Elements, keys: list[ElementKey], count: int) -> None:
        self._parts.append((set_name, elems, keys))
        self._count += count

    @property
    def ops(self) -> list[Op]:
        out: list[Op] = []
        for name, elems, keys in self._parts:
            if isinstance(elems, Blocks):
                items = tuple(elems.items_of(keys))
            else:
                items = tuple([(k, elems[k]) for k in keys])
            out.append(AddElements(name, items))
        return out

    @ops.setter
    def ops(self, value: list[Op]) -> None:
        raise AttributeError("ElementsLater builds its operations when it runs")

    def __bool__(self) -> bool:
        return self._count > 0

    def size(self) -> int:
        return self._count

    def concrete(self) -> Transaction:
        return Transaction(self.ops)


def _element_chunks(desired: Ruleset, limit: int) -> Iterator[Transaction]:
    # Sets whose elements only nft's text path can write (intervals: the cluster CIDRs,
    # source ranges) get a transaction of their own: a shared one would send thousands of
    # map elements through libnftables too, which is slow and keeps them in its cache.
    text_only = ElementsLater()
    for name, elems in desired.elements.items():
        sdef = desired.sets[name]
        if elems and sdef.compared and not sdef.fixed_size:
            text_only.add(name, elems, list(elems), len(elems))
    if text_only:
        yield text_only
    tx, size = ElementsLater(), 0
    for name, elems in desired.elements.items():
        if not elems or not desired.sets[name].compared:
            continue
        if not desired.sets[name].fixed_size:
            continue
        if isinstance(elems, Blocks):
            # Chunks end at a frontend boundary: a frontend's buckets go in together.
            keys: list[ElementKey] = []
            count = 0
            for frontend, (_, payload) in elems.blocks.items():
                if size + count >= limit and (keys or size):
                    if keys:
                        tx.add(name, elems, keys, count)
                    yield tx
                    tx, size, keys, count = ElementsLater(), 0, [], 0
                keys.append(frontend)
                count += len(payload)
            if keys:
                tx.add(name, elems, keys, count)
                size += count
            continue
        all_keys = list(elems)
        start = 0
        while start < len(all_keys):
            if size >= limit:
                yield tx
                tx, size = ElementsLater(), 0
            part = all_keys[start : start + limit - size]
            tx.add(name, elems, part, len(part))
            size += len(part)
            start += len(part)
    if tx:
        yield tx


def generation_plan(
    build: Build, applied: AppliedState | None, gen: int, reason: str, chunk: int = CHUNK
) -> Plan:
    desired = build(names_for(gen))
    plan = Plan("generation", gen, reason=reason, desired=desired)
    setup = Transaction([AddTable()])
    setup.ops += [AddSet(s) for s in desired.sets.values()]
    # By name: chains arrive in the order of sets of pick chains, which varies between runs
    # (hash seeds); a plan must not.
    body = sorted(
        (c for n, c in desired.chains.items() if n not in BASE_CHAINS), key=lambda c: c.name
    )
    setup.ops += [AddChain(c) for c in chains_in_order(body)]
    plan.transactions.append(setup)
    plan.transactions += list(_element_chunks(desired, chunk))
    # Base chains are never deleted: their rules are swapped in one transaction, and a
    # packet runs either the old rules (old generation, still complete) or the new ones.
    flip = Transaction()
    for name in BASE_CHAINS:
        chain = desired.chains[name]
        if applied is not None and name in applied.chains:
            flip.ops += [FlushChain(name), AddRules(chain)]
        else:
            flip.ops.append(AddChain(chain))
    plan.transactions.append(flip)
    if applied is not None:
        old_chains = [
            n for n in applied.chains if n not in BASE_CHAINS and not n.startswith(f"g{gen}-")
        ]
        old_sets = [n for n in applied.sets if not n.startswith(f"g{gen}-")]
        if old_chains or old_sets:
            cleanup = Transaction()
            cleanup.ops += _removal(applied, old_chains, old_sets)
            plan.transactions.append(cleanup)
    return plan


def make_plan(
    build: Build,
    applied: AppliedState | None,
    *,
    chunk: int = CHUNK,
    max_incremental: int | None = None,
    force_generation: bool = False,
    compare: Compare | None = None,
    keep: bool = False,
) -> Plan:
    """The cheapest way from `applied` to what `build` makes: nothing, one incremental
    change, or a new generation.

    `applied` holds the kernel's elements, or (with `compare`) only its names and rule
    counts: `compare(desired)` then tells which elements differ (see nftproxy.verifying).
    With `keep` (the inputs are known to be incomplete), nothing the table holds is
    deleted, only added or replaced (see `keeping`); a change that needs a new generation
    is then refused with KeepRefused.
    """
    if max_incremental is None:
        max_incremental = MAX_INCREMENTAL
    if applied is None:
        return generation_plan(build, None, 1, "no nftproxy table yet", chunk)
    gens = generations(applied)
    top = max(gens, default=0)
    if force_generation:
        why = "full resync requested"
    elif len(gens) != 1:
        why = "table holds no generation" if not gens else f"table holds generations {sorted(gens)}"
    else:
        desired = build(names_for(top))
        try:
            check_skeleton(desired, applied)
            tx = diff(desired, applied, None if compare is None else compare(desired))
        except SkeletonMismatch as exc:
            why = str(exc)
        else:
            if tx.size() <= max_incremental:
                kept = 0
                if keep:
                    tx, kept = keeping(tx)
                plan = Plan("incremental" if tx else "noop", top, desired=desired, kept=kept)
                plan.transactions.extend(tx.split())
                return plan
            why = f"{tx.size()} changes exceed one transaction"
            del tx
        # Let go of the first build before making the next: two at once is twice the memory.
        del desired
    if keep and applied.chains:
        raise KeepRefused(
            f"the table needs a new generation ({why}), which would drop what the "
            "incomplete input does not describe"
        )
    return generation_plan(build, applied, top + 1, why, chunk)


class KeepRefused(Exception):
    """Keeping what the table holds is not possible: the change needs a new generation."""


def keeping(tx: Transaction) -> tuple[Transaction, int]:
    """`tx` without its deletions, and how many objects that keeps. What a key is replaced
    by stays (it is deleted and added again in the same change).

    For incomplete inputs (an unreadable file, an invalid object): the rules of Services
    the valid inputs do not describe stay as they are, and so do pick chains and buckets
    they may use; a later complete input deletes what is left over.
    """
    added = {(op.set, key) for op in tx.ops if isinstance(op, AddElements) for key, _ in op.items}
    out, kept = Transaction(), 0
    for op in tx.ops:
        if isinstance(op, DeleteElements):
            again = tuple([key for key in op.keys if (op.set, key) in added])
            kept += len(op.keys) - len(again)
            if again:
                out.ops.append(dataclasses.replace(op, keys=again))
        elif isinstance(op, FlushChain | DeleteChain | DeleteSet):
            kept += isinstance(op, DeleteChain | DeleteSet)
        else:
            out.ops.append(op)
    return out, kept


def read_applied(backend: Backend) -> AppliedState | None:
    doc = backend.list_table()
    return None if doc is None else applied_from_json(doc)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    mode: str
    generation: int
    transactions: int
    changes: int
    seconds: float


Run = Callable[[Transaction, Mapping[str, SetDef]], None]


def run_plan(backend: Backend, plan: Plan, run: Run | None = None) -> ApplyResult:
    """Run the plan's transactions in order (each by `run`, default `Backend.apply`). A failed
    build step removes the half-built generation and re-raises; the previous generation
    keeps serving."""
    start = time.perf_counter()
    flipped = False
    commit = run or (lambda tx, sets: backend.apply(tx, sets))
    try:
        sets = plan.desired.sets if plan.desired is not None else {}
        for step in plan.transactions:
            tx = step.concrete()  # one chunk of a generation's elements exists at a time
            commit(tx, sets)
            if any(
                isinstance(op, AddChain | AddRules) and op.chain.name in BASE_CHAINS
                for op in tx.ops
            ):
                flipped = True
    except Exception:
        if plan.mode == "generation" and not flipped:
            _discard_generation(backend, plan.generation)
        raise
    return ApplyResult(
        plan.mode,
        plan.generation,
        len(plan.transactions),
        plan.size(),
        time.perf_counter() - start,
    )


def _removal(applied: AppliedState, chains: list[str], sets: list[str]) -> list[Op]:
    """Rules reference sets and map elements reference chains: flush the rules, then drop
    the sets (and their elements), then the chains."""
    return [
        *(FlushChain(n) for n in chains),
        *(DeleteSet(n, n in applied.maps) for n in sets),
        *(DeleteChain(n) for n in chains),
    ]


def _discard_generation(backend: Backend, gen: int) -> None:
    applied = read_applied(backend)
    if applied is None:
        return
    prefix = f"g{gen}-"
    chains = [n for n in applied.chains if n.startswith(prefix)]
    sets = [n for n in applied.sets if n.startswith(prefix)]
    tx = Transaction(_removal(applied, chains, sets))
    if tx:
        backend.apply(tx, {})


def cleanup(backend: Backend) -> bool:
    """Delete the nftproxy table; False when there was none. Nothing else is touched."""
    if backend.list_table() is None:
        return False
    backend.apply(Transaction([DeleteTable()]), {})
    return True
