"""Transactions as data: the verbs nftproxy sends (add/delete table, set, chain, rules,
elements) and `Transaction`, an ordered list of them that the kernel applies atomically.
`str(tx)` is the nft script; the netlink writer encodes the element verbs directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from nftproxy.ruleset.schema import (
    FAMILY,
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
    render_rule,
)

__all__ = [
    "AddChain",
    "AddElements",
    "AddRules",
    "AddSet",
    "AddTable",
    "DeleteChain",
    "DeleteElements",
    "DeleteSet",
    "DeleteTable",
    "FlushChain",
    "Op",
    "Transaction",
    "chain_targets",
    "chains_in_order",
    "render_atom",
    "render_element",
]


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
