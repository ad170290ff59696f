"""The desired ruleset: skeleton plus the union of Service fragments, kept incrementally.

Replacing one Service's fragment costs O(size of that fragment). Elements claimed by several
owners (a pod IP in the hairpin set of two Services, or two Services fighting over one
externalIP:port) resolve deterministically: the smallest owner wins, the others wait.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nftproxy.config import NodeConfig
from nftproxy.model import ServiceName
from nftproxy.ruleset.compile import (
    Fragment,
    Names,
    PickSpec,
    skeleton_chains,
    skeleton_elements,
    skeleton_sets,
)
from nftproxy.ruleset.schema import Chain, ElementKey, ElementValue, SetDef

Owner = tuple[str, str]
_SKELETON: Owner = ("", "")


@dataclass(slots=True)
class Ruleset:
    """A complete ruleset as data: what `render` writes and `explain` evaluates."""

    sets: dict[str, SetDef] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    elements: dict[str, dict[ElementKey, ElementValue]] = field(default_factory=dict)


@dataclass(slots=True)
class Scope:
    """What changed since the last sync: the only objects an incremental diff looks at."""

    elements: dict[str, set[ElementKey]] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.elements or self.chains or self.sets)

    def touch(self, set_name: str, key: ElementKey) -> None:
        self.elements.setdefault(set_name, set()).add(key)


class DesiredState:
    def __init__(self, node: NodeConfig, names: Names) -> None:
        self.node = node
        self.names = names
        self.ruleset = Ruleset(
            sets=dict(skeleton_sets(names, node)),
            chains=dict(skeleton_chains(names, node)),
            elements={name: {} for name in skeleton_sets(names, node)},
        )
        self._fragments: dict[Owner, Fragment] = {}
        self._picks: Counter[PickSpec] = Counter()
        # (set, key) -> owner of the effective value; contested keys keep every claim.
        self._owner: dict[tuple[str, ElementKey], Owner] = {}
        self._contested: dict[tuple[str, ElementKey], dict[Owner, ElementValue]] = {}
        self.changes = Scope()
        self._put(_SKELETON, skeleton_elements(names, node))

    def take_changes(self) -> Scope:
        """What changed since the last call: the scope of the next incremental diff."""
        changes, self.changes = self.changes, Scope()
        return changes

    @property
    def conflicts(self) -> dict[tuple[str, ElementKey], list[Owner]]:
        """Keys claimed with different values by several Services (the first one wins)."""
        out: dict[tuple[str, ElementKey], list[Owner]] = {}
        for k, claims in self._contested.items():
            if len(set(map(repr, claims.values()))) > 1:
                out[k] = sorted(claims)
        return out

    def set_service(self, sid: ServiceName, fragment: Fragment | None) -> None:
        owner = (sid.namespace, sid.name)
        self._remove(owner)
        if fragment is not None:
            self._put(owner, fragment)

    # --- internals ---------------------------------------------------------------------

    def _claim(self, owner: Owner, set_name: str, key: ElementKey, value: ElementValue) -> None:
        self.changes.touch(set_name, key)
        elems = self.ruleset.elements.setdefault(set_name, {})
        ref = (set_name, key)
        current = self._owner.get(ref)
        if current is None:
            self._owner[ref] = owner
            elems[key] = value
            return
        claims = self._contested.setdefault(ref, {current: elems[key]})
        claims[owner] = value
        winner = min(claims)
        self._owner[ref] = winner
        elems[key] = claims[winner]

    def _release(self, owner: Owner, set_name: str, key: ElementKey) -> None:
        self.changes.touch(set_name, key)
        ref = (set_name, key)
        elems = self.ruleset.elements[set_name]
        claims = self._contested.get(ref)
        if claims is None:
            if self._owner.get(ref) == owner:
                del self._owner[ref]
                del elems[key]
            return
        claims.pop(owner, None)
        winner = min(claims)
        self._owner[ref] = winner
        elems[key] = claims[winner]
        if len(claims) == 1:
            del self._contested[ref]

    def _put(self, owner: Owner, frag: Fragment) -> None:
        self._fragments[owner] = frag
        self.changes.sets.update(frag.sets)
        self.changes.chains.update(frag.chains)
        for name, sdef in frag.sets.items():
            self.ruleset.sets[name] = sdef
            self.ruleset.elements.setdefault(name, {})
        for name, chain in frag.chains.items():
            self.ruleset.chains[name] = chain
        for spec in frag.picks:
            if self._picks[spec] == 0:
                chain = spec.chain(self.names)
                self.ruleset.chains[chain.name] = chain
                self.changes.chains.add(chain.name)
            self._picks[spec] += 1
        for set_name, elems in frag.elements.items():
            for key, value in elems.items():
                self._claim(owner, set_name, key, value)

    def _remove(self, owner: Owner) -> None:
        frag = self._fragments.pop(owner, None)
        if frag is None:
            return
        for set_name, elems in frag.elements.items():
            for key in elems:
                self._release(owner, set_name, key)
        for spec in frag.picks:
            self._picks[spec] -= 1
            if self._picks[spec] == 0:
                del self._picks[spec]
                name = spec.chain(self.names).name
                del self.ruleset.chains[name]
                self.changes.chains.add(name)
        # A Service's own chains and sets carry a hash of its name: nobody else uses them.
        self.changes.chains.update(frag.chains)
        self.changes.sets.update(frag.sets)
        for name in frag.chains:
            self.ruleset.chains.pop(name, None)
        for name in frag.sets:
            self.ruleset.sets.pop(name, None)
            self.ruleset.elements.pop(name, None)
