"""What the kernel holds (`AppliedState`: names, rule counts and, when read, elements), and the
smallest transaction from there to the desired ruleset (`diff`). Chains never change in
place, so only a changed skeleton forces a new generation (`check_skeleton`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nftproxy.ruleset.desired import MISSING, Blocks, Missing, Ruleset, Scope, Unknown
from nftproxy.ruleset.schema import SKELETON_MARK, ElementKey, ElementValue
from nftproxy.ruleset.transaction import (
    AddChain,
    AddElements,
    AddRules,
    AddSet,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    FlushChain,
    Op,
    Transaction,
    chains_in_order,
)

__all__ = [
    "AppliedState",
    "ChainSummary",
    "SkeletonMismatch",
    "check_skeleton",
    "diff",
]


@dataclass(frozen=True, slots=True)
class ChainSummary:
    rules: int


@dataclass(slots=True)
class AppliedState:
    """A table as read back from the kernel (or as an in-memory backend keeps it)."""

    sets: set[str] = field(default_factory=set)
    maps: set[str] = field(default_factory=set)
    dynamic: set[str] = field(default_factory=set)  # sets whose elements the kernel adds
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    elements: dict[str, dict[ElementKey, ElementValue]] = field(default_factory=dict)
    # False for a summary of names and rule counts only: `record` then keeps no elements
    # either, or every element a partial sync ever wrote would pile up here.
    with_elements: bool = field(default=True, compare=False)

    @classmethod
    def of(cls, ruleset: Ruleset, *, elements: bool = True) -> AppliedState:
        """The state a kernel holds after applying `ruleset`; without its elements when
        the caller keeps them elsewhere (a second copy of every element is large)."""
        return cls(
            with_elements=elements,
            sets=set(ruleset.sets),
            maps={n for n, s in ruleset.sets.items() if s.is_map},
            dynamic={n for n, s in ruleset.sets.items() if not s.compared},
            chains={n: ChainSummary(len(c.rules)) for n, c in ruleset.chains.items()},
            elements={
                n: dict(e.items())
                for n, e in ruleset.elements.items()
                if elements and ruleset.sets[n].compared
            },
        )

    def matches(self, ruleset: Ruleset) -> bool:
        """Whether this (kernel) state is exactly `ruleset`, without copying either."""
        if self.sets != ruleset.sets.keys() or self.chains.keys() != ruleset.chains.keys():
            return False
        if any(self.chains[n].rules != len(c.rules) for n, c in ruleset.chains.items()):
            return False
        static = {n for n, s in ruleset.sets.items() if s.compared}
        return self.elements.keys() == static and all(
            self.elements[n] == ruleset.elements.get(n, {}) for n in static
        )

    def record(self, tx: Transaction) -> None:
        """Update this summary with a transaction the kernel accepted (no re-read)."""
        for op in tx.ops:
            match op:
                case AddSet(set=sdef):
                    self.sets.add(sdef.name)
                    if sdef.is_map:
                        self.maps.add(sdef.name)
                    if not sdef.compared:
                        self.dynamic.add(sdef.name)
                    elif self.with_elements:
                        self.elements.setdefault(sdef.name, {})
                case DeleteSet(name=name):
                    self.sets.discard(name)
                    self.maps.discard(name)
                    self.dynamic.discard(name)
                    self.elements.pop(name, None)
                case AddChain(chain=chain) | AddRules(chain=chain):
                    self.chains[chain.name] = ChainSummary(len(chain.rules))
                case FlushChain(name=name):
                    self.chains[name] = ChainSummary(0)
                case DeleteChain(name=name):
                    self.chains.pop(name, None)
                case AddElements(set=name, items=items) if self.with_elements:
                    self.elements.setdefault(name, {}).update(items)
                case DeleteElements(set=name, keys=keys) if self.with_elements:
                    elems = self.elements.get(name, {})
                    for k in keys:
                        elems.pop(k, None)
                case _:
                    pass

    def element_count(self) -> int:
        return sum(len(e) for e in self.elements.values())


class SkeletonMismatch(Exception):
    """The kernel's fixed objects differ from ours: only a new generation can fix that."""


def _element_changes(
    desired: Mapping[ElementKey, ElementValue], applied: Mapping[ElementKey, ElementValue]
) -> tuple[list[ElementKey], list[tuple[ElementKey, ElementValue]]]:
    if isinstance(desired, Blocks):
        # Read block by block once, not one bucket lookup per element (which decodes a
        # packed address each time), which made a full diff much slower.
        desired = dict(desired.items())
    deletes = [k for k, v in applied.items() if k not in desired or desired[k] != v]
    adds = [(k, v) for k, v in desired.items() if k not in applied or applied[k] != v]
    return deletes, adds


def diff(desired: Ruleset, applied: AppliedState, scope: Scope | None = None) -> Transaction:
    """The smallest transaction that turns `applied` into `desired`.

    With a scope, only the objects it names are compared, elements against the values
    the scope recorded before the change (the kernel's, when the last sync succeeded):
    O(change) instead of O(table), and the daemon keeps no copy of the kernel's elements.
    Raises SkeletonMismatch when an object exists under the same name with other content.
    """
    check_skeleton(desired, applied)
    set_names = desired.sets.keys() | applied.sets if scope is None else scope.sets
    chain_names = desired.chains.keys() | applied.chains.keys() if scope is None else scope.chains

    tx = Transaction()
    tx.ops.extend(
        AddSet(desired.sets[n])
        for n in sorted(set_names)
        if n in desired.sets and n not in applied.sets
    )
    new_chains = []
    for name in chain_names:
        chain = desired.chains.get(name)
        summary = applied.chains.get(name)
        if chain is None:
            continue
        if summary is None:
            new_chains.append(chain)
        elif summary.rules != len(chain.rules):
            raise SkeletonMismatch(
                f"chain {name} has {summary.rules} rules, not {len(chain.rules)}"
            )
    # Adding chains in dependency order (targets before the chains that jump to them) keeps
    # each chain one operation.
    tx.ops.extend(AddChain(c) for c in chains_in_order(sorted(new_chains, key=lambda c: c.name)))

    adds: list[Op] = []
    element_sets = desired.elements.keys() if scope is None else scope.before.keys()
    for name in sorted(element_sets):
        sdef = desired.sets.get(name)
        if sdef is None or not sdef.compared:
            continue
        want = desired.elements.get(name, {})
        if scope is None:
            dels, add = _element_changes(want, applied.elements.get(name, {}))
        else:
            dels, add = _element_changes_of(scope.before[name], want)
        if dels and name in applied.sets:
            # Deletions before additions: in an interval set, what an addition overlaps
            # must be gone first (see Transaction.split).
            tx.ops.append(DeleteElements(name, tuple(dels), sdef.interval))
        if add:
            adds.append(AddElements(name, tuple(add)))
    tx.ops.extend(adds)

    gone_chains = sorted(n for n in chain_names if n in applied.chains and n not in desired.chains)
    tx.ops.extend(FlushChain(n) for n in gone_chains)
    # Sets go before chains: a map's elements may still jump to a chain being removed.
    tx.ops.extend(
        DeleteSet(n, n in applied.maps)
        for n in sorted(set_names)
        if n in applied.sets and n not in desired.sets
    )
    tx.ops.extend(DeleteChain(n) for n in gone_chains)
    return tx


def check_skeleton(desired: Ruleset, applied: AppliedState) -> None:
    """Raise SkeletonMismatch unless `applied` was built from `desired`'s skeleton and every
    chain both hold has the same number of rules: what no element change can repair."""
    markers = [n for n in desired.chains if SKELETON_MARK in n]
    if any(m not in applied.chains for m in markers):
        raise SkeletonMismatch("the table was built from another skeleton (options or version)")
    for name, chain in desired.chains.items():
        summary = applied.chains.get(name)
        if summary is not None and summary.rules != len(chain.rules):
            raise SkeletonMismatch(
                f"chain {name} has {summary.rules} rules, not {len(chain.rules)}"
            )


def _element_changes_of(
    before: dict[ElementKey, ElementValue | Missing | Unknown],
    desired: Mapping[ElementKey, ElementValue],
) -> tuple[list[ElementKey], list[tuple[ElementKey, ElementValue]]]:
    deletes: list[ElementKey] = []
    adds: list[tuple[ElementKey, ElementValue]] = []
    for k, have in before.items():
        want = desired.get(k, MISSING)
        if want == have:
            continue
        if have is not MISSING:
            deletes.append(k)
        if not isinstance(want, Missing):
            adds.append((k, want))
    return deletes, adds
