"""The desired ruleset: skeleton plus the union of Service fragments, kept incrementally.

Replacing one Service's fragment costs O(size of that fragment). Elements claimed by several
owners (a pod IP in the hairpin set of two Services, or two Services fighting over one
externalIP:port) resolve deterministically: the smallest owner wins, the others wait.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import Iterator
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


@contextlib.contextmanager
def bulk_build() -> Iterator[None]:
    """Around a build of the whole desired state: it allocates millions of small objects,
    none of them cyclic garbage, so the cyclic collector would only add seconds and pauses.
    What survives is frozen out of later collections."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


_SKELETON: Owner = ("", "")


@dataclass(slots=True)
class Ruleset:
    """A complete ruleset as data: what `render` writes and `explain` evaluates."""

    sets: dict[str, SetDef] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    elements: dict[str, dict[ElementKey, ElementValue]] = field(default_factory=dict)


class Missing:
    """The value of an element that does not exist (distinct from a set's None value)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


@dataclass(slots=True)
class Scope:
    """What changed since the last sync: every touched element with the value it had
    before (what the kernel holds, since the last sync succeeded), and touched chains and
    sets. An incremental diff looks at nothing else."""

    before: dict[str, dict[ElementKey, ElementValue | Missing]] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.before or self.chains or self.sets)


@dataclass(frozen=True, slots=True)
class _Claimed:
    """What a Service put in, kept to take it out again (keys only: values live once, in
    the ruleset)."""

    keys: tuple[tuple[str, tuple[ElementKey, ...]], ...]
    chains: tuple[str, ...]
    sets: tuple[str, ...]
    picks: frozenset[PickSpec]


class DesiredState:
    def __init__(self, node: NodeConfig, names: Names, *, track_changes: bool = True) -> None:
        self.node = node
        self.names = names
        self.ruleset = Ruleset(
            sets=dict(skeleton_sets(names, node)),
            chains=dict(skeleton_chains(names, node)),
            elements={name: {} for name in skeleton_sets(names, node)},
        )
        self._claimed: dict[Owner, _Claimed] = {}
        self._picks: Counter[PickSpec] = Counter()
        # set -> key -> owner of the effective value; contested keys keep every claim.
        self._owners: dict[str, dict[ElementKey, Owner]] = {}
        self._contested: dict[tuple[str, ElementKey], dict[Owner, ElementValue]] = {}
        # A bulk build (cold start, new generation) needs no change log.
        self.track_changes = track_changes
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

    def _note(self, set_name: str, key: ElementKey, elems: dict[ElementKey, ElementValue]) -> None:
        before = self.changes.before.setdefault(set_name, {})
        if key not in before:
            before[key] = elems.get(key, MISSING)

    def _claim(
        self,
        owner: Owner,
        set_name: str,
        key: ElementKey,
        value: ElementValue,
        elems: dict[ElementKey, ElementValue],
        owners: dict[ElementKey, Owner],
    ) -> None:
        current = owners.get(key)
        if current is None:
            owners[key] = owner
            elems[key] = value
            return
        ref = (set_name, key)
        claims = self._contested.setdefault(ref, {current: elems[key]})
        claims[owner] = value
        # A pod IP may be in the hairpin set of thousands of Services: compare with the
        # current winner only, never scan every claim (that made a cold start O(N^2)).
        if owner <= current:
            owners[key] = owner
            elems[key] = value

    def _release(self, owner: Owner, set_name: str, key: ElementKey) -> None:
        elems = self.ruleset.elements[set_name]
        owners = self._owners[set_name]
        if self.track_changes:
            self._note(set_name, key, elems)
        ref = (set_name, key)
        claims = self._contested.get(ref)
        if claims is None:
            if owners.get(key) == owner:
                del owners[key]
                del elems[key]
            return
        claims.pop(owner, None)
        if owners.get(key) == owner:
            # Only when the winner leaves is the next one looked for.
            winner = min(claims)
            owners[key] = winner
            elems[key] = claims[winner]
        if len(claims) == 1:
            del self._contested[ref]

    def _put(self, owner: Owner, frag: Fragment) -> None:
        self._claimed[owner] = _Claimed(
            keys=tuple((name, tuple(elems)) for name, elems in frag.elements.items()),
            chains=tuple(frag.chains),
            sets=tuple(frag.sets),
            picks=frozenset(frag.picks),
        )
        if self.track_changes:
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
        for set_name, new in frag.elements.items():
            elems = self.ruleset.elements.setdefault(set_name, {})
            owners = self._owners.setdefault(set_name, {})
            if self.track_changes:
                before = self.changes.before.setdefault(set_name, {})
                # Not `new.keys() - before.keys()`: CPython builds that by walking all of
                # `before`, which made a sync of 10k changed Services quadratic (170 s).
                for key in new:
                    if key not in before:
                        before[key] = elems.get(key, MISSING)
            if owners.keys().isdisjoint(new):
                # The usual case, done in C: nobody else claims these keys.
                owners.update(dict.fromkeys(new, owner))
                elems.update(new)
                continue
            for key, value in new.items():
                self._claim(owner, set_name, key, value, elems, owners)

    def _remove(self, owner: Owner) -> None:
        claimed = self._claimed.pop(owner, None)
        if claimed is None:
            return
        for set_name, keys in claimed.keys:
            for key in keys:
                self._release(owner, set_name, key)
        for spec in claimed.picks:
            self._picks[spec] -= 1
            if self._picks[spec] == 0:
                del self._picks[spec]
                name = spec.chain(self.names).name
                del self.ruleset.chains[name]
                self.changes.chains.add(name)
        # A Service's own chains and sets carry a hash of its name: nobody else uses them.
        if self.track_changes:
            self.changes.chains.update(claimed.chains)
            self.changes.sets.update(claimed.sets)
        for name in claimed.chains:
            self.ruleset.chains.pop(name, None)
        for name in claimed.sets:
            self.ruleset.sets.pop(name, None)
            self.ruleset.elements.pop(name, None)
            self._owners.pop(name, None)
