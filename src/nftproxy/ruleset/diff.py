"""What the kernel holds, and the smallest transaction from there to the desired ruleset.

The applied side is a summary: set and chain names, rule counts, and every element of the
static sets. Chains are immutable by name (a changed per-Service chain
gets a new name), so only a changed skeleton forces a new generation; everything else is
element adds and deletes plus whole chains added or removed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from nftproxy.ruleset.desired import MISSING, Blocks, Missing, Ruleset, Scope, Unknown
from nftproxy.ruleset.schema import (
    FAMILY,
    SKELETON_MARK,
    TABLE,
    Atom,
    Chain,
    DnatMap,
    ElementKey,
    ElementValue,
    Lookup,
    NumgenVmap,
    SetDef,
    UpdateSet,
    Verdict,
    Vmap,
    is_record,
    network_atom,
    render_rule,
)


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
        the caller keeps them elsewhere (a copy costs tens of MB at 30k Services)."""
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


# --- operations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddTable:
    def render(self) -> Iterator[str]:
        yield f"add table {FAMILY} {TABLE}"


@dataclass(frozen=True, slots=True)
class DeleteTable:
    def render(self) -> Iterator[str]:
        yield f"delete table {FAMILY} {TABLE}"


@dataclass(frozen=True, slots=True)
class AddSet:
    set: SetDef

    def render(self) -> Iterator[str]:
        kind = "map" if self.set.is_map else "set"
        yield f"add {kind} {FAMILY} {TABLE} {self.set.name} {{ {self.set.spec()}; }}"


@dataclass(frozen=True, slots=True)
class DeleteSet:
    name: str
    is_map: bool

    def render(self) -> Iterator[str]:
        yield f"delete {'map' if self.is_map else 'set'} {FAMILY} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class AddChain:
    """Creates the chain and its rules."""

    chain: Chain

    def render(self) -> Iterator[str]:
        c = self.chain
        head = ""
        if c.hook:
            head = (
                f"type {c.hook.type} hook {c.hook.hook} priority {c.hook.priority}; policy accept; "
            )
        comment = f'comment "{c.comment}"; ' if c.comment else ""
        yield f"add chain {FAMILY} {TABLE} {c.name} {{ {head}{comment}}}"
        yield from AddRules(c).render()


@dataclass(frozen=True, slots=True)
class AddRules:
    """Appends the chain's rules to the existing chain of that name (after a flush)."""

    chain: Chain

    def render(self) -> Iterator[str]:
        for rule in self.chain.rules:
            yield f"add rule {FAMILY} {TABLE} {self.chain.name} {render_rule(rule)}"


@dataclass(frozen=True, slots=True)
class FlushChain:
    name: str

    def render(self) -> Iterator[str]:
        yield f"flush chain {FAMILY} {TABLE} {self.name}"


@dataclass(frozen=True, slots=True)
class DeleteChain:
    name: str

    def render(self) -> Iterator[str]:
        yield f"delete chain {FAMILY} {TABLE} {self.name}"


def render_atom(atom: Atom) -> str:
    return str(atom)


def render_element(key: ElementKey, value: ElementValue) -> str:
    text = " . ".join(map(render_atom, key))
    if value is None:
        return text
    if isinstance(value, Verdict):
        return f"{text} : {value.render()}"
    return f"{text} : {' . '.join(map(render_atom, value))}"


# One nft command line per this many elements keeps lines (and error excerpts) readable.
_ELEMENTS_PER_LINE = 1000


@dataclass(frozen=True, slots=True)
class AddElements:
    set: str
    items: tuple[tuple[ElementKey, ElementValue], ...]

    def render(self) -> Iterator[str]:
        for i in range(0, len(self.items), _ELEMENTS_PER_LINE):
            chunk = self.items[i : i + _ELEMENTS_PER_LINE]
            body = ", ".join(render_element(k, v) for k, v in chunk)
            yield f"add element {FAMILY} {TABLE} {self.set} {{ {body} }}"


@dataclass(frozen=True, slots=True)
class DeleteElements:
    set: str
    keys: tuple[ElementKey, ...]
    # An interval set's: an addition in the same change may overlap these (see split).
    interval: bool = False

    def render(self) -> Iterator[str]:
        for i in range(0, len(self.keys), _ELEMENTS_PER_LINE):
            body = ", ".join(render_element(k, None) for k in self.keys[i : i + _ELEMENTS_PER_LINE])
            yield f"delete element {FAMILY} {TABLE} {self.set} {{ {body} }}"


Op = (
    AddTable
    | DeleteTable
    | AddSet
    | DeleteSet
    | AddChain
    | AddRules
    | FlushChain
    | DeleteChain
    | AddElements
    | DeleteElements
)


@dataclass(slots=True)
class Transaction:
    """An ordered list of operations; the kernel applies one transaction atomically."""

    ops: list[Op] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __str__(self) -> str:
        return "".join(line + "\n" for op in self.ops for line in op.render())

    def concrete(self) -> Transaction:
        """This transaction with its operations at hand (see applying.ElementsLater)."""
        return self

    def split(self) -> list[Transaction]:
        """The same change as up to three transactions, to run in order: new sets and
        chains; then elements (repointing); then what went away.

        Each transaction flips atomically, but one packet is not evaluated against one
        generation: the kernel picks a chain's rules by the generation at which the packet
        entered the hook, while every set lookup reads the generation of that instant. So a
        packet may find a new frontend element leading to a chain created in the same commit,
        whose rules it cannot see yet (it leaves un-NATed and its connection hangs), or an old
        frontend leading to a bucket just deleted. Hence: a verdict never points to a chain
        younger than itself, and nothing is removed in the commit that stops using it.
        Replacements (a key with a new value) stay in the middle one: either value is valid.

        So do interval elements that an addition may overlap (10.0.0.0/8 -> 10.0.0.0/16,
        a /32 -> its /23): the kernel refuses an overlapping addition, so the deletion goes
        first in the same commit, and the set is never without either. Our interval sets
        range over their last field only, so "may overlap" is "same other fields": a
        frontend whose ranges change swaps them in one commit, while one that loses its
        firewall loses its ranges with its firewall{f} element, in the last transaction
        (earlier, every packet to it would be dropped). Nothing refers to interval elements,
        so deleting them early leaves no reference dangling.
        """
        added: dict[str, set[ElementKey]] = {}
        for op in self.ops:
            if isinstance(op, AddElements):
                added.setdefault(op.set, set()).update(k for k, _ in op.items)
        create, repoint, remove = Transaction(), Transaction(), Transaction()
        for op in self.ops:
            if isinstance(op, DeleteElements):
                again = added.get(op.set, set())
                if op.interval:
                    heads = {k[:-1] for k in again}  # the fields before the range
                    replaced = tuple(k for k in op.keys if k[:-1] in heads)
                    gone = tuple(k for k in op.keys if k[:-1] not in heads)
                else:
                    replaced = tuple(k for k in op.keys if k in again)
                    gone = tuple(k for k in op.keys if k not in again)
                if replaced:
                    repoint.ops.append(DeleteElements(op.set, replaced, op.interval))
                if gone:
                    remove.ops.append(DeleteElements(op.set, gone, op.interval))
            elif isinstance(op, FlushChain | DeleteChain | DeleteSet):
                remove.ops.append(op)
            elif isinstance(op, AddTable | AddSet | AddChain):
                create.ops.append(op)
            else:
                repoint.ops.append(op)
        return [tx for tx in (create, repoint, remove) if tx]

    def chunked(self, limit: int) -> list[Transaction]:
        """The same change as transactions of at most about `limit` elements each, to run
        in order: for a repair too big for one commit (a flushed map), where each step
        leaves the table less broken. A key deleted and added again stays in one commit;
        new sets and chains come with the first, chains and sets that go with the last."""
        if self.size() <= limit:
            return [self]
        slot: dict[tuple[str, ElementKey], int] = {}
        for op in self.ops:
            if isinstance(op, AddElements | DeleteElements):
                keys = [k for k, _ in op.items] if isinstance(op, AddElements) else op.keys
                for key in keys:
                    slot.setdefault((op.set, key), len(slot) // limit)
        parts = [Transaction() for _ in range(max(slot.values(), default=0) + 1)]
        for op in self.ops:
            if isinstance(op, AddElements):
                cut: dict[int, list[tuple[ElementKey, ElementValue]]] = {}
                for key, value in op.items:
                    cut.setdefault(slot[op.set, key], []).append((key, value))
                for i, items in cut.items():
                    parts[i].ops.append(AddElements(op.set, tuple(items)))
            elif isinstance(op, DeleteElements):
                gone: dict[int, list[ElementKey]] = {}
                for key in op.keys:
                    gone.setdefault(slot[op.set, key], []).append(key)
                for i, keys in gone.items():
                    parts[i].ops.append(DeleteElements(op.set, tuple(keys), op.interval))
            elif isinstance(op, FlushChain | DeleteChain | DeleteSet):
                parts[-1].ops.append(op)
            else:
                parts[0].ops.append(op)
        return parts

    def size(self) -> int:
        """Objects touched: elements count one each, a chain counts its rules."""
        total = 0
        for op in self.ops:
            if isinstance(op, AddElements):
                total += len(op.items)
            elif isinstance(op, DeleteElements):
                total += len(op.keys)
            elif isinstance(op, AddChain):
                total += 1 + len(op.chain.rules)
            elif isinstance(op, AddRules):
                total += len(op.chain.rules)
            else:
                total += 1
        return total


class SkeletonMismatch(Exception):
    """The kernel's fixed objects differ from ours: only a new generation can fix that."""


def _element_changes(
    desired: Mapping[ElementKey, ElementValue], applied: Mapping[ElementKey, ElementValue]
) -> tuple[list[ElementKey], list[tuple[ElementKey, ElementValue]]]:
    if isinstance(desired, Blocks):
        # Read block by block once, not one bucket lookup per element (which decodes a
        # packed address each time): a full diff at 30k Services took 1.7 s instead of 0.5.
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


def chain_targets(chain: Chain) -> Iterator[str]:
    """Chains the rules jump to, and sets they use as "@name"."""
    for rule in chain.rules:
        for part in rule:
            if isinstance(part, Verdict) and part.target:
                yield part.target
            elif isinstance(part, NumgenVmap):
                yield from (v.target for v in part.targets if v.target)
            elif isinstance(part, Lookup | UpdateSet):
                yield f"@{part.set}"
            elif isinstance(part, Vmap | DnatMap):
                yield f"@{part.map}"


def chains_in_order(chains: list[Chain]) -> list[Chain]:
    by_name = {c.name: c for c in chains}
    done: set[str] = set()
    out: list[Chain] = []

    def visit(c: Chain) -> None:
        if c.name in done:
            return
        done.add(c.name)
        for t in chain_targets(c):
            if t in by_name:
                visit(by_name[t])
        out.append(c)

    for c in chains:
        visit(c)
    return out


# --- reading the kernel --------------------------------------------------------------------


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
