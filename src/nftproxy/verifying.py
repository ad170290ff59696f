"""Does the kernel's table hold what we meant? Each set is dumped by netlink and compared with
the desired elements encoded as the kernel lists them; what differs becomes a `Scope` for
`diff`. Asking the kernel key by key would cost a reply per element and miss elements nobody
meant. Also the record (`Record`) that lets a restart skip all this (docs/ruleset.md)."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from nftproxy.kernel.backend import Backend, Dumps
from nftproxy.kernel.encoding import (
    ElementType,
    Encoder,
    decode_data,
    decode_key,
    element_data,
    element_key,
    element_type,
)
from nftproxy.kernel.errors import Unsupported
from nftproxy.ruleset.desired import MISSING, UNKNOWN, Missing, Ruleset, Scope, Unknown
from nftproxy.ruleset.diff import AppliedState, ChainSummary
from nftproxy.ruleset.listing import applied_from_json
from nftproxy.ruleset.schema import RECORD, ElementKey, ElementValue, SetDef, is_record, record_set
from nftproxy.ruleset.transaction import AddElements, DeleteElements

__all__ = [
    "RECORD_TYPE",
    "Dumps",
    "Record",
    "differences",
    "dumped_sets",
    "notified_differences",
    "read_record",
    "record_ops",
    "structure",
]

# Desired elements encoded at a time: bounds the memory of a comparison beyond the listings.
_CHUNK = 10_000


Before = dict[ElementKey, ElementValue | Missing | Unknown]


def structure(kernel: Backend) -> AppliedState | None:
    """Names and rule counts of our table, without elements (netlink dumps that carry no
    elements, cheap at any size), or None when `kernel` cannot list them that way (the
    nft binary backend)."""
    try:
        found = kernel.objects()
    except Unsupported:
        return None
    if found is None:
        return AppliedState(with_elements=False)
    return AppliedState(
        sets=set(found.sets),
        maps=found.maps,
        dynamic=found.dynamic,
        chains={n: ChainSummary(r) for n, r in found.chains.items()},
        with_elements=False,
    )


def dumped_sets(structure: AppliedState) -> list[str]:
    """The sets of the kernel's table worth dumping before a comparison: all but the
    kernel's own (dynamic) and the record."""
    return sorted(n for n in structure.sets if n not in structure.dynamic and not is_record(n))


def differences(
    kernel: Backend,
    desired: Ruleset,
    structure: AppliedState,
    dumps: Dumps | None = None,
    *,
    only: Collection[str] | None = None,
) -> Scope:
    """Every element whose presence or value differs between the kernel and `desired`,
    with what the kernel holds (MISSING, or UNKNOWN for another value or an element
    `desired` lacks), and every set and chain name of either side.

    `structure` is the kernel's names and rule counts (`AppliedState` without elements);
    `dumps`, listings already under way (see Backend.dump_sets); `only`, the sets whose
    elements to compare (default: all; those of the desired state missing from the kernel
    always count).
    """
    scope = Scope(
        sets=set(desired.sets) | structure.sets,
        chains=set(desired.chains) | set(structure.chains),
    )
    compared = {
        name: sdef
        for name, sdef in desired.sets.items()
        if sdef.compared and name in structure.sets and (only is None or name in only)
    }
    wanted = [n for n, sdef in compared.items() if element_type(sdef) is not None]
    if dumps is None:
        dumps = kernel.dump_sets(wanted)
    encoder = Encoder(as_dumped=True)
    for name in sorted(desired.sets):
        sdef = desired.sets[name]
        if not sdef.compared:
            continue
        want = desired.elements.get(name, {})
        etype = element_type(sdef)
        if name not in structure.sets:
            before: Before = dict.fromkeys(want, MISSING)
        elif name not in compared:
            continue
        elif etype is None:
            before = _compare_atoms(want, _listed(kernel, sdef))
        else:
            found = dumps.get(name)
            listed = found.result() if found is not None else kernel.set_elements(name)
            before = _compare_dumped(listed, want, etype, encoder)
        if before:
            scope.before[name] = before
    return scope


def notified_differences(
    desired: Ruleset, notified: Mapping[str, Sequence[tuple[bool, bytes]]]
) -> tuple[dict[str, Before], set[str]]:
    """What the kernel holds for the keys someone else's transactions added (True) or
    deleted (False), in order, as the commit monitor saw them, where that differs from
    `desired`: the same answer as `differences` for those keys, at O(change) and without
    a dump. Also the sets this cannot tell (interval sets): compare those whole."""
    befores: dict[str, Before] = {}
    whole: set[str] = set()
    encoder = Encoder(as_dumped=True)
    for name, changes in notified.items():
        sdef = desired.sets.get(name)
        if sdef is None or not sdef.compared:
            continue
        etype = element_type(sdef)
        if etype is None:
            whole.add(name)
            continue
        now: dict[bytes, bytes | None] = {}
        for added, element in changes:
            now[element_key(element, etype)] = element if added else None
        want = desired.elements.get(name, {})
        before: Before = {}
        for raw, have in now.items():
            key = decode_key(raw, etype)
            value = want.get(key, MISSING)
            if isinstance(value, Missing):
                if have is not None:
                    before[key] = UNKNOWN
            elif have is None:
                before[key] = MISSING
            elif have != encoder.elements([(key, value)], etype)[0]:
                before[key] = UNKNOWN
        if before:
            befores[name] = before
    return befores, whole


def _compare_dumped(
    listed: list[bytes] | None,
    want: Mapping[ElementKey, ElementValue],
    etype: ElementType,
    encoder: Encoder,
) -> Before:
    if listed is None:
        return dict.fromkeys(want, MISSING)
    unexpected = set(listed)
    missing: dict[bytes, ElementKey] = {}
    for chunk in _chunks(want.items()):
        for element, (key, _) in zip(encoder.elements(chunk, etype), chunk, strict=True):
            if element in unexpected:
                unexpected.discard(element)
            else:
                missing[element_key(element, etype)] = key
    before: Before = dict.fromkeys(missing.values(), MISSING)
    for element in unexpected:
        raw = element_key(element, etype)
        mine = missing.get(raw)
        # Same key, other value: a replacement. A key we never meant: a deletion.
        before[mine if mine is not None else decode_key(raw, etype)] = UNKNOWN
    return before


def _listed(kernel: Backend, sdef: SetDef) -> dict[ElementKey, ElementValue]:
    doc = kernel.list_set(sdef.name, is_map=sdef.is_map)
    return {} if doc is None else applied_from_json(doc).elements.get(sdef.name, {})


def _compare_atoms(
    want: Mapping[ElementKey, ElementValue], have: Mapping[ElementKey, ElementValue]
) -> Before:
    before: Before = {}
    for key, value in have.items():
        if want.get(key, MISSING) != value:
            before[key] = value
    for key in want:
        if key not in have:
            before[key] = MISSING
    return before


def _chunks(
    items: Iterable[tuple[ElementKey, ElementValue]],
) -> Iterator[list[tuple[ElementKey, ElementValue]]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, _CHUNK)):
        yield chunk


# --- the record -------------------------------------------------------------------------


def _record_type() -> ElementType:
    etype = element_type(record_set(RECORD))
    assert etype is not None, "the record set has fixed-size fields"
    return etype


# How the record's one element is encoded (the set is schema.record_set).
RECORD_TYPE = _record_type()
_RECORD_KEY: ElementKey = (1,)


@dataclass(frozen=True, slots=True)
class Record:
    """What the daemon last wrote: the desired state's digest, and the nftables generation
    id its commit led to."""

    digest: bytes
    generation: int


def read_record(kernel: Backend, set_name: str) -> Record | None:
    """The record in `set_name`, None when there is none (or it is malformed)."""
    listed = kernel.set_elements(set_name)
    for element in listed or ():
        try:
            if decode_key(element_key(element, RECORD_TYPE), RECORD_TYPE) != _RECORD_KEY:
                continue
            digest, generation = decode_data(element_data(element, RECORD_TYPE), RECORD_TYPE)
            return Record(
                socket.inet_pton(socket.AF_INET6, str(digest)),
                int.from_bytes(socket.inet_aton(str(generation)), "big"),
            )
        except (ValueError, OSError):
            return None
    return None


def record_ops(
    set_name: str, record: Record, *, replace: bool
) -> list[AddElements | DeleteElements]:
    """The element operations that write `record` (deleting the one there, if any)."""
    value = (
        socket.inet_ntop(socket.AF_INET6, record.digest),
        socket.inet_ntoa((record.generation & 0xFFFFFFFF).to_bytes(4, "big")),
    )
    ops: list[AddElements | DeleteElements] = []
    if replace:
        ops.append(DeleteElements(set_name, (_RECORD_KEY,)))
    ops.append(AddElements(set_name, ((_RECORD_KEY, value),)))
    return ops
