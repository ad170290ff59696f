"""An in-memory table (a fake kernel, named as such) for fast tests of diff and compile.

It applies a transaction all-or-nothing with the checks the kernel makes that matter here:
objects exist before use, no duplicates, elements deleted must exist, a chain must not be
referenced when deleted. Real-kernel tests cover the same behaviour against nftables.
"""

from __future__ import annotations

import copy

from nftproxy.ruleset.diff import AppliedState, ChainSummary
from nftproxy.ruleset.schema import Verdict
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


class MemoryRefused(Exception):
    """The fake kernel refused a transaction; nothing was applied."""


class MemoryTable:
    def __init__(self) -> None:
        self.state: AppliedState | None = None
        # chain -> chains its rules jump to (for the "still referenced" check)
        self._refs: dict[str, set[str]] = {}

    def apply(self, tx: Transaction) -> None:
        state = copy.deepcopy(self.state)
        refs = copy.deepcopy(self._refs)
        for op in tx.ops:
            state = self._op(op, state, refs)
        self.state, self._refs = state, refs

    def _op(
        self, op: object, state: AppliedState | None, refs: dict[str, set[str]]
    ) -> AppliedState | None:
        if isinstance(op, AddTable):
            return state or AppliedState()
        if isinstance(op, DeleteTable):
            if state is None:
                raise MemoryRefused("delete table: no such table")
            refs.clear()
            return None
        if state is None:
            raise MemoryRefused(f"{type(op).__name__}: no table")
        match op:
            case AddSet(set=sdef):
                if sdef.name in state.sets:
                    raise MemoryRefused(f"set {sdef.name} exists")
                state.sets.add(sdef.name)
                if sdef.is_map:
                    state.maps.add(sdef.name)
                if not sdef.compared:
                    state.dynamic.add(sdef.name)
                else:
                    state.elements[sdef.name] = {}
            case DeleteSet(name=name):
                if name not in state.sets:
                    raise MemoryRefused(f"set {name}: not found")
                for chain, used in refs.items():
                    if f"@{name}" in used:
                        raise MemoryRefused(f"set {name} is used by chain {chain}")
                state.sets.discard(name)
                state.maps.discard(name)
                state.dynamic.discard(name)
                state.elements.pop(name, None)
            case AddChain(chain=chain):
                if chain.name in state.chains:
                    raise MemoryRefused(f"chain {chain.name} exists")
                targets = set(chain_targets(chain))
                for t in targets:
                    known = t[1:] in state.sets if t.startswith("@") else t in state.chains
                    if not known:
                        raise MemoryRefused(f"chain {chain.name} refers to missing {t}")
                state.chains[chain.name] = ChainSummary(len(chain.rules))
                refs[chain.name] = targets
            case AddRules(chain=chain):
                if chain.name not in state.chains:
                    raise MemoryRefused(f"chain {chain.name}: not found")
                targets = set(chain_targets(chain))
                state.chains[chain.name] = ChainSummary(
                    state.chains[chain.name].rules + len(chain.rules)
                )
                refs[chain.name] = refs.get(chain.name, set()) | targets
            case FlushChain(name=name):
                if name not in state.chains:
                    raise MemoryRefused(f"chain {name}: not found")
                state.chains[name] = ChainSummary(0)
                refs[name] = set()
            case DeleteChain(name=name):
                if name not in state.chains:
                    raise MemoryRefused(f"chain {name}: not found")
                if state.chains[name].rules:
                    raise MemoryRefused(f"chain {name} is not empty")
                for other, used in refs.items():
                    if other != name and name in used:
                        raise MemoryRefused(f"chain {name} is used by chain {other}")
                for set_name, elems in state.elements.items():
                    if any(isinstance(v, Verdict) and v.target == name for v in elems.values()):
                        raise MemoryRefused(f"chain {name} is used by map {set_name}")
                del state.chains[name]
                refs.pop(name, None)
            case AddElements(set=set_name, items=items):
                if set_name not in state.elements:
                    raise MemoryRefused(f"set {set_name}: not found")
                elems = state.elements[set_name]
                for key, value in items:
                    target = value.target if isinstance(value, Verdict) else None
                    if target and target not in state.chains:
                        raise MemoryRefused(f"{set_name}: chain {target} not found")
                    if key in elems and elems[key] != value:
                        raise MemoryRefused(f"{set_name}: element {key} exists")
                    elems[key] = value
            case DeleteElements(set=set_name, keys=keys):
                if set_name not in state.elements:
                    raise MemoryRefused(f"set {set_name}: not found")
                elems = state.elements[set_name]
                for key in keys:
                    if key not in elems:
                        raise MemoryRefused(f"{set_name}: element {key} not found")
                    del elems[key]
            case _:
                raise MemoryRefused(f"unknown operation {op!r}")
        return state
