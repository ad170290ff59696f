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
from typing import Any

from nftproxy.kernel.errors import NetlinkError, NftError, Unsupported
from nftproxy.kernel.netlink import (
    NFT_SET_MAP,
    NFT_SET_TIMEOUT,
    CommitMonitor,
    Ours,
    TableObjects,
)
from nftproxy.ruleset.diff import AppliedState, ChainSummary
from nftproxy.ruleset.schema import SetDef, Verdict
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


class FakeBackend:
    """A table in memory; `state` is what a real kernel would list (None: no table)."""

    def __init__(self) -> None:
        self.state: AppliedState | None = None
        # chain -> chains its rules jump to (for the "still referenced" check)
        self._refs: dict[str, set[str]] = {}
        self._generation = 1

    def apply(
        self,
        tx: Transaction,
        sets: Mapping[str, SetDef] | None = None,
        *,
        generation: int | None = None,
    ) -> bool:
        if generation is not None and generation != self._generation:
            raise NetlinkError("generation id is not current", errno=errno.ERESTART)
        state = copy.deepcopy(self.state)
        refs = copy.deepcopy(self._refs)
        for op in tx.ops:
            state = self._op(op, state, refs)
        self.state, self._refs = state, refs
        self._generation += 1
        return generation is not None

    def batches(self, tx: Transaction, sets: Mapping[str, SetDef] | None = None) -> bool:
        return bool(tx.ops) and all(isinstance(op, AddElements | DeleteElements) for op in tx.ops)

    def generation(self) -> int:
        return self._generation

    def objects(self) -> TableObjects | None:
        if self.state is None:
            return None
        state = self.state
        return TableObjects(
            chains={n: c.rules for n, c in state.chains.items()},
            sets={
                n: (NFT_SET_MAP if n in state.maps else 0)
                | (NFT_SET_TIMEOUT if n in state.dynamic else 0)
                for n in state.sets
            },
        )

    def run(self, script: str) -> None:
        raise Unsupported(_TEXT)

    def check(self, script: str) -> None:
        raise Unsupported(_TEXT)

    def list_table(self) -> dict[str, Any] | None:
        raise Unsupported(_TEXT)

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        raise Unsupported(_TEXT)

    def set_elements(self, name: str) -> list[bytes] | None:
        raise Unsupported("the fake kernel keeps elements as values, not bytes")

    def dump_sets(self, names: Sequence[str]) -> Mapping[str, Future[list[bytes] | None]]:
        raise Unsupported("the fake kernel keeps elements as values, not bytes")

    def monitor(self, ours: Ours | None = None) -> CommitMonitor:
        raise Unsupported("the fake kernel sends no notifications")

    def forget_caches(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _op(
        self, op: object, state: AppliedState | None, refs: dict[str, set[str]]
    ) -> AppliedState | None:
        if isinstance(op, AddTable):
            return state or AppliedState()
        if isinstance(op, DeleteTable):
            if state is None:
                raise FakeRefused("delete table: no such table")
            refs.clear()
            return None
        if state is None:
            raise FakeRefused(f"{type(op).__name__}: no table")
        match op:
            case AddSet(set=sdef):
                if sdef.name in state.sets:
                    raise FakeRefused(f"set {sdef.name} exists")
                state.sets.add(sdef.name)
                if sdef.is_map:
                    state.maps.add(sdef.name)
                if not sdef.compared:
                    state.dynamic.add(sdef.name)
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
                if set_name not in state.elements:
                    raise FakeRefused(f"set {set_name}: not found")
                elems = state.elements[set_name]
                for key, value in items:
                    target = value.target if isinstance(value, Verdict) else None
                    if target and target not in state.chains:
                        raise FakeRefused(f"{set_name}: chain {target} not found")
                    if key in elems and elems[key] != value:
                        raise FakeRefused(f"{set_name}: element {key} exists")
                    elems[key] = value
            case DeleteElements(set=set_name, keys=keys):
                if set_name not in state.elements:
                    raise FakeRefused(f"set {set_name}: not found")
                elems = state.elements[set_name]
                for key in keys:
                    if key not in elems:
                        raise FakeRefused(f"{set_name}: element {key} not found")
                    del elems[key]
            case _:
                raise FakeRefused(f"unknown operation {op!r}")
        return state
