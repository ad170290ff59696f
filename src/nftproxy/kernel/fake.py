"""An in-memory nftables table, implementing the Backend protocol for fast tests of compile,
diff and the sync loop. A transaction applies all-or-nothing, with the kernel's checks that
matter here (objects exist before use, no duplicates, deleted elements and unreferenced
chains, a current generation id). It takes transactions, not nft text; real-kernel tests
cover the same behaviour against nftables."""

from __future__ import annotations

import copy
import errno
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from nftproxy.kernel.encoding import Encoder, element_type, transaction_types
from nftproxy.kernel.errors import NetlinkError, NftError, Unsupported
from nftproxy.kernel.netlink import (
    NFT_SET_EVAL,
    NFT_SET_MAP,
    NFT_SET_TIMEOUT,
    CommitMonitor,
    Ours,
    TableObjects,
)
from nftproxy.ruleset.diff import AppliedState, ChainSummary
from nftproxy.ruleset.schema import ElementKey, ElementValue, SetDef, Verdict
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
    Transaction,
    chain_targets,
)

__all__ = ["FakeBackend", "FakeRefused"]

_TEXT = "the fake kernel takes transactions, not nft text"


class FakeRefused(NftError):
    """The fake kernel refused a transaction; nothing was applied."""


@dataclass(slots=True)
class _Table:
    """What a transaction works on: a copy, swapped in only when every operation passed."""

    state: AppliedState | None = None
    # chain -> chains and "@sets" its rules use (for the "still referenced" checks)
    refs: dict[str, set[str]] = field(default_factory=dict)
    defs: dict[str, SetDef] = field(default_factory=dict)
    # The elements of sets `state` does not compare (the record, affinity sets).
    kept: dict[str, dict[ElementKey, ElementValue]] = field(default_factory=dict)


class FakeBackend:
    """A table in memory; `state` is what a real kernel would list (None: no table)."""

    def __init__(self) -> None:
        self._table = _Table()
        self._generation = 1

    @property
    def state(self) -> AppliedState | None:
        return self._table.state

    def apply(
        self,
        tx: Transaction,
        sets: Mapping[str, SetDef] | None = None,
        *,
        generation: int | None = None,
    ) -> bool:
        checked = generation is not None and self.batches(tx, sets or {})
        if checked and generation != self._generation:
            raise NetlinkError("generation id is not current", errno=errno.ERESTART)
        table = copy.deepcopy(self._table)
        for op in tx.ops:
            table.state = self._op(op, table)
        self._table = table
        self._generation = (self._generation + 1) & 0xFFFFFFFF
        return checked

    def batches(self, tx: Transaction, sets: Mapping[str, SetDef]) -> bool:
        """As the libnftables backend: elements-only transactions of fixed-size sets."""
        return transaction_types(tx, sets) is not None

    def generation(self) -> int:
        return self._generation

    def objects(self) -> TableObjects | None:
        table = self._table
        if table.state is None:
            return None
        return TableObjects(
            chains={n: c.rules for n, c in table.state.chains.items()},
            sets={n: _flags(sdef) for n, sdef in table.defs.items()},
        )

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        """The set as `nft -j list set|map` shows it, in the form ruleset.listing reads."""
        elements = self._elements(name)
        if elements is None:
            return None
        if is_map:
            listed: list[Any] = [[_json_key(k), _json_value(v)] for k, v in elements.items()]
        else:
            listed = [_json_key(k) for k in elements]
        return {"nftables": [{"map" if is_map else "set": {"name": name, "elem": listed}}]}

    def set_elements(self, name: str) -> list[bytes] | None:
        """The set's elements encoded as a netlink dump lists them."""
        elements = self._elements(name)
        if elements is None:
            return None
        etype = element_type(self._table.defs[name])
        if etype is None:
            raise Unsupported(f"set {name}: not fixed-size, listed as nft JSON only")
        return Encoder(as_dumped=True).elements(list(elements.items()), etype)

    def dump_sets(self, names: Sequence[str]) -> Mapping[str, Future[list[bytes] | None]]:
        dumps: dict[str, Future[list[bytes] | None]] = {}
        for name in names:
            done: Future[list[bytes] | None] = Future()
            try:
                done.set_result(self.set_elements(name))
            except NftError as exc:
                done.set_exception(exc)
            dumps[name] = done
        return dumps

    def run(self, script: str) -> None:
        raise Unsupported(_TEXT)

    def check(self, script: str) -> None:
        raise Unsupported(_TEXT)

    def list_table(self) -> dict[str, Any] | None:
        raise Unsupported(_TEXT)

    def monitor(self, ours: Ours | None = None) -> CommitMonitor:
        raise Unsupported("the fake kernel sends no notifications")

    def forget_caches(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _elements(self, name: str) -> dict[ElementKey, ElementValue] | None:
        table = self._table
        if table.state is None or name not in table.state.sets:
            return None
        found = table.state.elements.get(name)
        return found if found is not None else table.kept.get(name, {})

    def _op(self, op: object, table: _Table) -> AppliedState | None:
        state, refs = table.state, table.refs
        if isinstance(op, AddTable):
            return state or AppliedState()
        if isinstance(op, DeleteTable):
            if state is None:
                raise FakeRefused("delete table: no such table")
            refs.clear()
            table.defs.clear()
            table.kept.clear()
            return None
        if state is None:
            raise FakeRefused(f"{type(op).__name__}: no table")
        match op:
            case AddSet(set=sdef):
                if sdef.name in state.sets:
                    raise FakeRefused(f"set {sdef.name} exists")
                state.sets.add(sdef.name)
                table.defs[sdef.name] = sdef
                if sdef.is_map:
                    state.maps.add(sdef.name)
                if not sdef.compared:
                    state.dynamic.add(sdef.name)
                    table.kept[sdef.name] = {}
                else:
                    state.elements[sdef.name] = {}
            case DeleteSet(name=name):
                if name not in state.sets:
                    raise FakeRefused(f"set {name}: not found")
                for chain, used in refs.items():
                    if f"@{name}" in used:
                        raise FakeRefused(f"set {name} is used by chain {chain}")
                state.sets.discard(name)
                state.maps.discard(name)
                state.dynamic.discard(name)
                state.elements.pop(name, None)
                table.defs.pop(name, None)
                table.kept.pop(name, None)
            case AddChain(chain=chain):
                if chain.name in state.chains:
                    raise FakeRefused(f"chain {chain.name} exists")
                targets = set(chain_targets(chain))
                for t in targets:
                    known = t[1:] in state.sets if t.startswith("@") else t in state.chains
                    if not known:
                        raise FakeRefused(f"chain {chain.name} refers to missing {t}")
                state.chains[chain.name] = ChainSummary(len(chain.rules))
                refs[chain.name] = targets
            case AddRules(chain=chain):
                if chain.name not in state.chains:
                    raise FakeRefused(f"chain {chain.name}: not found")
                targets = set(chain_targets(chain))
                state.chains[chain.name] = ChainSummary(
                    state.chains[chain.name].rules + len(chain.rules)
                )
                refs[chain.name] = refs.get(chain.name, set()) | targets
            case FlushChain(name=name):
                if name not in state.chains:
                    raise FakeRefused(f"chain {name}: not found")
                state.chains[name] = ChainSummary(0)
                refs[name] = set()
            case DeleteChain(name=name):
                if name not in state.chains:
                    raise FakeRefused(f"chain {name}: not found")
                if state.chains[name].rules:
                    raise FakeRefused(f"chain {name} is not empty")
                for other, used in refs.items():
                    if other != name and name in used:
                        raise FakeRefused(f"chain {name} is used by chain {other}")
                for set_name, elems in state.elements.items():
                    if any(isinstance(v, Verdict) and v.target == name for v in elems.values()):
                        raise FakeRefused(f"chain {name} is used by map {set_name}")
                del state.chains[name]
                refs.pop(name, None)
            case AddElements(set=set_name, items=items):
                held = state.elements.get(set_name, table.kept.get(set_name))
                if held is None:
                    raise FakeRefused(f"set {set_name}: not found")
                for key, value in items:
                    target = value.target if isinstance(value, Verdict) else None
                    if target and target not in state.chains:
                        raise FakeRefused(f"{set_name}: chain {target} not found")
                    if key in held and held[key] != value:
                        raise FakeRefused(f"{set_name}: element {key} exists")
                    held[key] = value
            case DeleteElements(set=set_name, keys=keys):
                held = state.elements.get(set_name, table.kept.get(set_name))
                if held is None:
                    raise FakeRefused(f"set {set_name}: not found")
                for key in keys:
                    if key not in held:
                        raise FakeRefused(f"{set_name}: element {key} not found")
                    del held[key]
            case _:
                raise FakeRefused(f"unknown operation {op!r}")
        return state


def _flags(sdef: SetDef) -> int:
    """NFT_SET_* flags as the kernel reports them for this definition."""
    flags = NFT_SET_MAP if sdef.is_map else 0
    if sdef.timeout is not None or "timeout" in sdef.flags:
        flags |= NFT_SET_TIMEOUT
    if "dynamic" in sdef.flags:
        flags |= NFT_SET_EVAL
    return flags


def _json_key(key: ElementKey) -> Any:
    return key[0] if len(key) == 1 else {"concat": list(key)}


def _json_value(value: ElementValue) -> Any:
    if isinstance(value, Verdict):
        return {value.kind: {"target": value.target}} if value.target else {value.kind: None}
    return _json_key(value) if value is not None else None
