"""The desired ruleset: the skeleton plus the union of Service fragments, kept incrementally
(`DesiredState`): replacing one Service's fragment costs O(size of that fragment) and
records what it changed (`Scope`). Elements several Services claim resolve deterministically
(docs/ruleset.md, "Changes are transactions the size of the change")."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import re
from collections import Counter
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nftproxy.config import NodeConfig
from nftproxy.model import ServiceName
from nftproxy.ruleset.compile import (
    FAMILIES,
    Block,
    Firewall,
    Fragment,
    Names,
    PickSpec,
    block_items,
    block_values,
    firewall_of,
    skeleton_chains,
    skeleton_elements,
    skeleton_sets,
)
from nftproxy.ruleset.schema import SKELETON_MARK, Chain, ElementKey, ElementValue, SetDef

__all__ = [
    "MISSING",
    "UNKNOWN",
    "Blocks",
    "DesiredState",
    "Elements",
    "Missing",
    "Owner",
    "Ruleset",
    "Scope",
    "Unknown",
    "bulk_build",
    "is_endpoint_map",
]

Owner = tuple[str, str]


@contextlib.contextmanager
def bulk_build() -> Iterator[None]:
    """Around a build of the whole desired state: it allocates a great many small objects,
    none of them cyclic garbage, so the cyclic collector would only add time and pauses.
    What survives is frozen out of later collections."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


_SKELETON: Owner = ("", "")


# Endpoint maps: keys are (*frontend, bucket) with buckets 0..n-1 for each frontend.
_ENDPOINT_MAP = re.compile(r"(np-)?endpoints(-local)?[46]-[a-z]+")


def is_endpoint_map(names: Names, set_name: str) -> bool:
    return set_name.startswith(names.prefix) and bool(
        _ENDPOINT_MAP.fullmatch(set_name, len(names.prefix))
    )


class Blocks(Mapping[ElementKey, ElementValue]):
    """An endpoint map kept as frontend -> Block (its buckets 0..n-1, see compile.Block).

    The endpoint maps hold most elements (one per endpoint of every frontend): one entry
    per frontend, in the form compile makes it, instead of a key tuple, a value tuple and
    two dict entries per endpoint. Reads see ordinary (*frontend, bucket) keys and
    (address, port) values.
    """

    __slots__ = ("_len", "blocks")

    def __init__(self) -> None:
        self.blocks: dict[ElementKey, Block] = {}
        self._len = 0

    def __getitem__(self, key: ElementKey) -> ElementValue:
        block = self.blocks.get(key[:-1])
        bucket = key[-1] if key else None
        if block is None or type(bucket) is not int or not 0 <= bucket < len(block[1]):
            raise KeyError(key)
        port, payload = block
        return payload[bucket] if port is None else (payload[bucket], port)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or not key:
            return False
        block = self.blocks.get(key[:-1])
        bucket = key[-1]
        return block is not None and type(bucket) is int and 0 <= bucket < len(block[1])

    def __iter__(self) -> Iterator[ElementKey]:
        for frontend, (_, payload) in self.blocks.items():
            for bucket in range(len(payload)):
                yield (*frontend, bucket)

    def __len__(self) -> int:
        return self._len

    def items(self) -> ItemsView[ElementKey, ElementValue]:
        return _BlockItems(self)

    def items_of(self, frontends: list[ElementKey]) -> Iterator[tuple[ElementKey, ElementValue]]:
        """The elements of these frontends, bucket by bucket."""
        blocks = self.blocks
        for frontend in frontends:
            yield from block_items(frontend, blocks[frontend])

    # Frontend-level access, for DesiredState's claims.
    def put(self, frontend: ElementKey, block: Block) -> None:
        old = self.blocks.get(frontend)
        self._len += len(block[1]) - (len(old[1]) if old is not None else 0)
        self.blocks[frontend] = block

    def drop(self, frontend: ElementKey) -> None:
        self._len -= len(self.blocks.pop(frontend)[1])


class _BlockItems(ItemsView[ElementKey, ElementValue]):
    _mapping: Blocks

    def __iter__(self) -> Iterator[tuple[ElementKey, ElementValue]]:
        for frontend, block in self._mapping.blocks.items():
            yield from block_items(frontend, block)


Elements = Mapping[ElementKey, ElementValue]


@dataclass(slots=True)
class Ruleset:
    """A complete ruleset as data: what `render` writes and `explain` evaluates."""

    sets: dict[str, SetDef] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    elements: dict[str, Elements] = field(default_factory=dict)


class Missing:
    """The value of an element that does not exist (distinct from a set's None value)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


class Unknown:
    """A value the kernel holds that the desired state does not know (found by a
    comparison, see nftproxy.verifying): equal to nothing, so the element is replaced or
    deleted."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()


@dataclass(slots=True)
class Scope:
    """What changed since the last sync: every touched element with the value it had
    before (what the kernel holds, since the last sync succeeded), and touched chains and
    sets. An incremental diff looks at nothing else."""

    before: dict[str, dict[ElementKey, ElementValue | Missing | Unknown]] = field(
        default_factory=dict
    )
    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.before or self.chains or self.sets)


@dataclass(frozen=True, slots=True)
class _Claimed:
    """What a Service put in, kept to take it out again (keys only: values live once, in
    the ruleset)."""

    # Flat, one tuple a Service rather than one per set: set name, how many keys, the
    # keys; the next set name...
    keys: tuple[str | int | ElementKey, ...]
    chains: tuple[str, ...]
    sets: tuple[str, ...]
    picks: frozenset[PickSpec]
    fingerprint: int

    @staticmethod
    def flatten(grouped: Mapping[str, Mapping[ElementKey, Any]]) -> tuple[Any, ...]:
        flat: list[Any] = []
        for name, new in grouped.items():
            flat.append(name)
            flat.append(len(new))
            flat.extend(new)
        return tuple(flat)

    def by_set(self) -> Iterator[tuple[str, tuple[ElementKey, ...]]]:
        flat, i = self.keys, 0
        while i < len(flat):
            name, count = flat[i], flat[i + 1]
            assert isinstance(name, str) and isinstance(count, int)
            yield name, flat[i + 2 : i + 2 + count]  # type: ignore[misc]
            i += 2 + count


class _Frontends:
    """Blocks seen one frontend at a time: the store DesiredState claims in."""

    __slots__ = ("blocks",)

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks

    def __getitem__(self, frontend: ElementKey) -> Block:
        return self.blocks.blocks[frontend]

    def __setitem__(self, frontend: ElementKey, block: Block) -> None:
        self.blocks.put(frontend, block)

    def __delitem__(self, frontend: ElementKey) -> None:
        self.blocks.drop(frontend)

    def get(self, frontend: ElementKey) -> Block | None:
        return self.blocks.blocks.get(frontend)

    def update(self, new: Mapping[ElementKey, Block]) -> None:
        for frontend, block in new.items():
            self.blocks.put(frontend, block)


class _Firewalls:
    """Firewalls seen one frontend at a time: the store DesiredState claims them in, under
    the firewall-allow{f} set's name. A frontend's firewall (see compile.Firewall) is its
    element in firewall{f} and its ranges in firewall-allow{f}; setting it rewrites both."""

    __slots__ = ("allow", "by_frontend", "firewall")

    def __init__(
        self, firewall: dict[ElementKey, ElementValue], allow: dict[ElementKey, ElementValue]
    ) -> None:
        self.by_frontend: dict[ElementKey, Firewall] = {}
        self.firewall = firewall
        self.allow = allow

    def __getitem__(self, frontend: ElementKey) -> Firewall:
        return self.by_frontend[frontend]

    def __setitem__(self, frontend: ElementKey, allowed: Firewall) -> None:
        self._clear(frontend)
        self.by_frontend[frontend] = allowed
        if allowed is not None:
            self.firewall[frontend] = None
            for cidr in allowed:
                self.allow[(*frontend, cidr)] = None

    def __delitem__(self, frontend: ElementKey) -> None:
        self._clear(frontend)
        del self.by_frontend[frontend]

    def get(self, frontend: ElementKey) -> Firewall:
        return self.by_frontend.get(frontend)

    def update(self, new: Mapping[ElementKey, Firewall]) -> None:
        for frontend, allowed in new.items():
            self[frontend] = allowed

    def _clear(self, frontend: ElementKey) -> None:
        old = self.by_frontend.get(frontend)
        if old is not None:
            del self.firewall[frontend]
            for cidr in old:
                del self.allow[(*frontend, cidr)]


# What claims are made in: a set's elements, an endpoint map's frontends, or firewalls.
_Store = dict[ElementKey, ElementValue] | _Frontends | _Firewalls


class DesiredState:
    def __init__(self, node: NodeConfig, names: Names, *, track_changes: bool = True) -> None:
        self.node = node
        self.names = names
        self.ruleset = Ruleset(
            sets=dict(skeleton_sets(names, node)),
            chains=dict(skeleton_chains(names, node)),
            elements={name: self._new_elements(name) for name in skeleton_sets(names, node)},
        )
        self._claimed: dict[Owner, _Claimed] = {}
        self._picks: Counter[PickSpec] = Counter()
        self._pick_sets: dict[frozenset[PickSpec], frozenset[PickSpec]] = {}
        # Maps: set -> key (a frontend in endpoint maps) -> owner of the effective value;
        # contested keys keep every claim.
        self._owners: dict[str, dict[ElementKey, Owner]] = {}
        self._contested: dict[tuple[str, ElementKey], dict[Owner, Any]] = {}
        # Plain sets have no values to disagree on, so no owners: a key stays while anyone
        # claims it. Only keys with more than one claim are counted (a pod IP in the hairpin
        # sets of several Services), which is far smaller than an owner per key.
        self._claims: dict[tuple[str, ElementKey], int] = {}
        self._firewalls = {
            allow: _Firewalls(self._plain_elements(firewall_of(allow)), self._plain_elements(allow))
            for f in FAMILIES
            if (allow := names(f"firewall-allow{f}")) in self.ruleset.sets
        }
        # A bulk build (cold start, new generation) needs no change log.
        self.track_changes = track_changes
        self.changes = Scope()
        self._digest = 0
        self._put(_SKELETON, skeleton_elements(names, node))

    @property
    def digest(self) -> bytes:
        """16 bytes that identify the ruleset, equal in every process that builds it from
        the same inputs, options and code: fragments compile deterministically and claims
        resolve by owner, so it is a sum over owners of their fragments' fingerprints,
        kept up to date at O(1) per change. The skeleton's chains and set definitions are
        identified by its marker chain's name, which it includes."""
        marker = next(n for n in self.ruleset.chains if SKELETON_MARK in n)
        mark = int.from_bytes(hashlib.blake2b(marker.encode(), digest_size=16).digest())
        return ((self._digest + mark) % (1 << 128)).to_bytes(16, "big")

    def take_changes(self) -> Scope:
        """What changed since the last call: the scope of the next incremental diff."""
        changes, self.changes = self.changes, Scope()
        return changes

    @property
    def conflicts(self) -> dict[tuple[str, ElementKey], list[Owner]]:
        """Keys claimed with different values by several Services (the first one wins).
        In endpoint maps the key is the frontend, without the bucket."""
        out: dict[tuple[str, ElementKey], list[Owner]] = {}
        for k, claims in self._contested.items():
            if len(set(map(repr, claims.values()))) > 1:
                out[k] = sorted(claims)
        return out

    def conflict_warnings(self) -> list[str]:
        """One line per address and port (or node port) that several Services claim with
        different rules, naming them and the one that wins (the first by namespace/name).
        Only the dispatch maps are named: the other sets of a contested frontend follow."""
        dispatch = {
            self.names(f"{kind}{f}"): kind for kind in ("frontends", "nodeports") for f in (4, 6)
        }
        out = []
        for (set_name, key), owners in sorted(self.conflicts.items(), key=repr):
            kind = dispatch.get(set_name)
            if kind is None:
                continue
            if kind == "frontends":
                vip, proto, port = key
                what = f"[{vip}]:{port}/{proto}" if ":" in str(vip) else f"{vip}:{port}/{proto}"
            else:
                proto, port = key
                what = f"node port {port}/{proto}"
            who = ", ".join(f"{ns}/{name}" for ns, name in owners)
            ns, name = owners[0]
            out.append(f"{what} is claimed by several Services ({who}); {ns}/{name} wins")
        return out

    def set_node(self, node: NodeConfig) -> bool:
        """Take new node facts in place when they change nothing but the skeleton's
        elements: the addresses of the node's interfaces (which select the NodePort
        addresses) and the service CIDRs; no Service compiles differently for them. The
        change log then holds those elements' change. False, and nothing changed, when
        anything else differs: build a new state. (The node IPs are not among them: a
        load-balancer firewall admits its own IPs when its ranges hold a node IP.)"""
        same = replace(
            node, interface_ips=self.node.interface_ips, service_cidrs=self.node.service_cidrs
        )
        if same != self.node:
            return False
        names = self.names
        if skeleton_sets(names, node) != skeleton_sets(names, self.node) or skeleton_chains(
            names, node
        ) != skeleton_chains(names, self.node):
            return False  # a set appears or goes (`primary` follows the node IPs)
        self._remove(_SKELETON)
        self.node = node
        self._put(_SKELETON, skeleton_elements(names, node))
        return True

    def set_service(self, sid: ServiceName, fragment: Fragment | None) -> None:
        owner = (sid.namespace, sid.name)
        self._remove(owner)
        if fragment is not None:
            self._put(owner, fragment)

    # --- internals ---------------------------------------------------------------------

    def _new_elements(self, set_name: str) -> Elements:
        return Blocks() if is_endpoint_map(self.names, set_name) else {}

    def _plain_elements(self, set_name: str) -> dict[ElementKey, ElementValue]:
        elems = self.ruleset.elements[set_name]
        assert isinstance(elems, dict)
        return elems

    def _store(self, set_name: str) -> _Store:
        firewalls = self._firewalls.get(set_name)
        if firewalls is not None:
            return firewalls
        elems = self.ruleset.elements.get(set_name)
        if elems is None:
            elems = self.ruleset.elements[set_name] = self._new_elements(set_name)
        if isinstance(elems, Blocks):
            return _Frontends(elems)
        assert isinstance(elems, dict)
        return elems

    def _note(self, set_name: str, key: ElementKey, store: _Store, new_len: int = 0) -> None:
        """Remember what the kernel holds for `key` before this sync's first change to it
        (for a frontend of an endpoint map: each bucket of its old and new values)."""
        if isinstance(store, _Firewalls):
            self._note_firewall(set_name, key, store.get(key), None)
            return
        before = self.changes.before.setdefault(set_name, {})
        if isinstance(store, _Frontends):
            block = store.get(key)
            old = block_values(block) if block is not None else ()
            for bucket in range(max(len(old), new_len)):
                full = (*key, bucket)
                if full not in before:
                    before[full] = old[bucket] if bucket < len(old) else MISSING
        elif key not in before:
            before[key] = store.get(key, MISSING)

    def _note_firewall(
        self, allow_set: str, frontend: ElementKey, old: Firewall, new: Firewall
    ) -> None:
        """`_note` for a frontend's firewall: `old` is what the store holds now (its
        elements exist unless changed earlier in this sync), elements only `new` makes
        do not."""
        before = self.changes.before
        firewall = before.setdefault(firewall_of(allow_set), {})
        if frontend not in firewall:
            firewall[frontend] = MISSING if old is None else None
        allow = before.setdefault(allow_set, {})
        for cidr in old or ():
            allow.setdefault((*frontend, cidr), None)
        for cidr in new or ():
            allow.setdefault((*frontend, cidr), MISSING)

    def _claim(
        self,
        owner: Owner,
        set_name: str,
        key: ElementKey,
        value: Any,
        store: _Store,
        owners: dict[ElementKey, Owner],
    ) -> None:
        current = owners.get(key)
        if current is None:
            owners[key] = owner
            store[key] = value
            return
        ref = (set_name, key)
        claims = self._contested.setdefault(ref, {current: store[key]})
        claims[owner] = value
        # A pod IP may be in the hairpin set of thousands of Services: compare with the
        # current winner only, never scan every claim (that made a cold start O(N^2)).
        if owner <= current:
            owners[key] = owner
            store[key] = value

    def _release(self, owner: Owner, set_name: str, key: ElementKey) -> None:
        store = self._store(set_name)
        if set_name not in self._owners:
            self._release_plain(set_name, key, store)
            return
        owners = self._owners[set_name]
        old = store.get(key) if isinstance(store, _Frontends) else None
        old_len = len(old[1]) if old is not None else 0
        if self.track_changes:
            self._note(set_name, key, store)
        ref = (set_name, key)
        claims = self._contested.get(ref)
        if claims is None:
            if owners.get(key) == owner:
                del owners[key]
                del store[key]
            return
        claims.pop(owner, None)
        if owners.get(key) == owner:
            # Only when the winner leaves is the next one looked for.
            winner = min(claims)
            owners[key] = winner
            store[key] = claims[winner]
            if self.track_changes and isinstance(store, _Frontends):
                # The new winner may have more buckets: those did not exist before.
                before = self.changes.before[set_name]
                for bucket in range(old_len, len(claims[winner][1])):
                    before.setdefault((*key, bucket), MISSING)
            elif self.track_changes and isinstance(store, _Firewalls):
                # Ranges only the new winner has did not exist before.
                self._note_firewall(set_name, key, None, claims[winner])
        if len(claims) == 1:
            del self._contested[ref]

    def _release_plain(self, set_name: str, key: ElementKey, store: _Store) -> None:
        assert isinstance(store, dict)
        ref = (set_name, key)
        count = self._claims.get(ref)
        if count is None:
            if self.track_changes:
                self._note(set_name, key, store)
            store.pop(key, None)
        elif count > 2:
            self._claims[ref] = count - 1
        else:
            del self._claims[ref]

    def _put_plain(self, set_name: str, new: Mapping[ElementKey, Any], store: _Store) -> None:
        assert isinstance(store, dict)
        if store.keys().isdisjoint(new):
            store.update(new)
            return
        claims = self._claims
        for key in new:
            if key in store:
                ref = (set_name, key)
                claims[ref] = claims.get(ref, 1) + 1
            else:
                store[key] = None

    def _is_plain_set(self, set_name: str) -> bool:
        sdef = self.ruleset.sets.get(set_name)
        return sdef is not None and not sdef.is_map and set_name not in self._firewalls

    def _put(self, owner: Owner, frag: Fragment) -> None:
        grouped: dict[str, Mapping[ElementKey, Any]] = {
            **frag.elements,
            **frag.blocks,
            **frag.firewalls,
        }
        claimed = self._claimed[owner] = _Claimed(
            keys=_Claimed.flatten(grouped),
            chains=tuple(frag.chains),
            sets=tuple(frag.sets),
            picks=self._shared_picks(frag.picks),
            fingerprint=frag.fingerprint(owner),
        )
        self._digest += claimed.fingerprint
        if self.track_changes:
            self.changes.sets.update(frag.sets)
            self.changes.chains.update(frag.chains)
        for name, sdef in frag.sets.items():
            self.ruleset.sets[name] = sdef
            self.ruleset.elements.setdefault(name, self._new_elements(name))
        for name, chain in frag.chains.items():
            self.ruleset.chains[name] = chain
        for spec in frag.picks:
            if self._picks[spec] == 0:
                chain = spec.chain(self.names)
                self.ruleset.chains[chain.name] = chain
                self.changes.chains.add(chain.name)
            self._picks[spec] += 1
        for set_name, new in grouped.items():
            store = self._store(set_name)
            if self.track_changes:
                if isinstance(store, _Frontends):
                    for key, block in new.items():
                        self._note(set_name, key, store, len(block[1]))
                elif isinstance(store, _Firewalls):
                    for key, allowed in new.items():
                        self._note_firewall(set_name, key, store.get(key), allowed)
                else:
                    before = self.changes.before.setdefault(set_name, {})
                    # Not `new.keys() - before.keys()`: CPython builds that by walking all
                    # of `before`, which made a sync of many changed Services quadratic.
                    for key in new:
                        if key not in before:
                            before[key] = store.get(key, MISSING)
            if set_name not in self._owners and self._is_plain_set(set_name):
                self._put_plain(set_name, new, store)
                continue
            owners = self._owners.setdefault(set_name, {})
            if owners.keys().isdisjoint(new):
                # The usual case, done in C: nobody else claims these keys.
                owners.update(dict.fromkeys(new, owner))
                store.update(new)
                continue
            for key, value in new.items():
                self._claim(owner, set_name, key, value, store, owners)

    def _shared_picks(self, picks: set[PickSpec]) -> frozenset[PickSpec]:
        # Most Services use one of a handful of pick chains: one frozenset per combination
        # rather than one per Service.
        key = frozenset(picks)
        return self._pick_sets.setdefault(key, key)

    def _remove(self, owner: Owner) -> None:
        claimed = self._claimed.pop(owner, None)
        if claimed is None:
            return
        self._digest -= claimed.fingerprint
        for set_name, keys in claimed.by_set():
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
