"""Does the kernel's table hold what we meant? Answered element by element, cheaply.

The daemon keeps no copy of what it wrote. At start, after someone else committed to the
namespace, and every `--verify-period`, it reads each set of its table by netlink and
compares it with the desired state encoded the same way (`netlink.Encoder(as_dumped=True)`).
What differs becomes a `Scope`, the same record of "what the kernel holds for these keys"
that incremental syncs diff against, so `diff` turns it into the smallest repair; when
nothing differs there is nothing to commit.

How a set is read depends on its size. A dump lists every element, so it also finds
elements nobody meant, but the kernel restarts its walk of a hash set for every 32 KiB it
returns: 300k elements take 1-2 s, 1M half a minute. Sets larger than `LOOKUP_ABOVE` (the
endpoint maps of large clusters) are instead asked for each key of the desired state, a
hash lookup each: elements with other keys are not seen there, and cannot be reached
either (a packet only looks up buckets of the frontends the frontend maps lead to).
Interval sets (a few CIDRs) are listed through nft. Sets the kernel fills (session
affinity's clients) and the record are not compared. Rules are compared by their number
per chain (`TableObjects`); their content is not read back (see docs/ruleset.md).

The record (`schema.RECORD`) lets a restart skip all of this: see `read_record`.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nftproxy.netlink import (
    ElementType,
    Encoder,
    decode_data,
    decode_key,
    element_data,
    element_key,
    element_type,
)
from nftproxy.ruleset.desired import MISSING, UNKNOWN, Missing, Ruleset, Scope, Unknown
from nftproxy.ruleset.diff import AddElements, AppliedState, DeleteElements, applied_from_json
from nftproxy.ruleset.schema import ElementKey, ElementValue, SetDef

__all__ = [
    "LOOKUP_ABOVE",
    "RECORD_TYPE",
    "Lister",
    "Record",
    "differences",
    "read_record",
    "record_ops",
]

# Sets with more elements than this are read by key lookups, smaller ones by a dump.
LOOKUP_ABOVE = 50_000
# Desired elements encoded at a time: bounds the memory of a comparison to one set's
# listing plus one chunk.
_CHUNK = 10_000


class Lister(Protocol):
    """What the comparison reads from the kernel (`nft.LibNftables` provides it)."""

    def set_elements(self, name: str) -> list[bytes] | None: ...

    def lookup_elements(self, name: str, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None: ...


Before = dict[ElementKey, ElementValue | Missing | Unknown]


def differences(kernel: Lister, desired: Ruleset, structure: AppliedState) -> Scope:
    """Every element whose presence or value differs between the kernel and `desired`,
    with what the kernel holds (MISSING, or UNKNOWN for another value or an element
    `desired` lacks), and every set and chain name of either side.

    `structure` is the kernel's names and rule counts (`AppliedState` without elements).
    """
    scope = Scope(
        sets=set(desired.sets) | structure.sets,
        chains=set(desired.chains) | set(structure.chains),
    )
    encoders = _Encoders()
    for name in sorted(desired.sets):
        sdef = desired.sets[name]
        if not sdef.compared:
            continue
        want = desired.elements.get(name, {})
        etype = element_type(sdef)
        if name not in structure.sets:
            before: Before = dict.fromkeys(want, MISSING)
        elif etype is None:
            before = _compare_atoms(want, _listed(kernel, sdef))
        elif len(want) > LOOKUP_ABOVE:
            before = _looked_up(kernel, name, want, etype, encoders)
        else:
            before = _dumped(kernel, name, want, etype, encoders)
        if before:
            scope.before[name] = before
    return scope


class _Encoders:
    def __init__(self) -> None:
        self.dumped = Encoder(as_dumped=True)
        self.request = Encoder()

    def keys(self, chunk: list[tuple[ElementKey, ElementValue]], etype: ElementType) -> list[bytes]:
        return self.request.encode_op(DeleteElements("", tuple([k for k, _ in chunk])), etype)[0]


def _dumped(
    kernel: Lister,
    name: str,
    want: Mapping[ElementKey, ElementValue],
    etype: ElementType,
    encoders: _Encoders,
) -> Before:
    listed = kernel.set_elements(name)
    if listed is None:
        return dict.fromkeys(want, MISSING)
    unexpected = set(listed)
    del listed
    missing: dict[bytes, ElementKey] = {}
    for chunk in _chunks(want.items()):
        for element, (key, _) in zip(encoders.dumped.elements(chunk, etype), chunk, strict=True):
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


def _looked_up(
    kernel: Lister,
    name: str,
    want: Mapping[ElementKey, ElementValue],
    etype: ElementType,
    encoders: _Encoders,
) -> Before:
    before: Before = {}
    for chunk in _chunks(want.items()):
        found = kernel.lookup_elements(name, encoders.keys(chunk, etype))
        wanted = encoders.dumped.elements(chunk, etype)
        for (key, _), element, have in zip(chunk, wanted, found, strict=True):
            if have is None:
                before[key] = MISSING
            elif have != element:
                before[key] = UNKNOWN
    return before


def _listed(kernel: Lister, sdef: SetDef) -> dict[ElementKey, ElementValue]:
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

# The record set's one element: 1 : <digest as an IPv6 address> . <generation id as IPv4>.
RECORD_TYPE = ElementType(("port",), ("ipv6", "ipv4"))
_RECORD_KEY: ElementKey = (1,)


@dataclass(frozen=True, slots=True)
class Record:
    """What the daemon last wrote: the desired state's digest, and the nftables generation
    id its commit led to."""

    digest: bytes
    generation: int


def read_record(kernel: Lister, set_name: str) -> Record | None:
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
