"""Services, EndpointSlices and ServiceCIDRs read from YAML/JSON manifests (`kubectl get ...
-o yaml` dumps, hand-written files, `-` for standard input), through the validation the API
watcher uses. No file can crash, freeze or exhaust the reader: every problem is an error
naming its file, and `ReadLimits` bound what a file may cost (docs/daemon.md says why)."""

from __future__ import annotations

import errno
import gc
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgspec
import yaml

from nftproxy.kube.objects import (
    SERVICE_NAME_LABEL,
    InvalidObject,
    RawEndpointSlice,
    RawService,
    RawServiceCIDR,
    Skip,
    from_builtins,
    to_service,
    to_service_cidr,
    to_slice,
)
from nftproxy.model import EndpointSlice, Service, ServiceCIDR, ServiceName, SliceName

__all__ = [
    "DEFAULT_LIMITS",
    "MANIFEST_SUFFIXES",
    "Manifests",
    "ReadLimits",
    "broken_symlink",
    "load_paths",
    "manifest_files",
    "read_yaml_document",
    "read_yaml_documents",
    "special_file",
]

MANIFEST_SUFFIXES: Final = frozenset({".yaml", ".yml", ".json"})
# The path that means standard input, and how errors name it.
STDIN: Final = "-"
STDIN_SOURCE: Final = "<stdin>"

_MiB: Final = 1 << 20

# Only its parser is used (see the YAML section below): libyaml's is much faster on large
# kubectl dumps; pure Python is the portable fallback.
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_SERVICE_API: Final = "v1"
_SLICE_API: Final = "discovery.k8s.io/v1"
_SLICE_GROUP: Final = "discovery.k8s.io/"
_SERVICE_CIDR_API: Final = "networking.k8s.io/v1"
_NETWORKING_GROUP: Final = "networking.k8s.io/"


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What reading one manifest file may cost at most; docs/daemon.md says why."""

    # Bytes read from one file, which is held in memory whole while it is decoded.
    max_file_bytes: int = 512 * _MiB
    # Characters of one YAML document (a JSON file is one), aliases expanded: bounds the
    # memory of the document built from them.
    max_document_chars: int = 512 * _MiB
    # Levels of nested mappings and lists in a document, aliases expanded.
    max_depth: int = 100
    # Characters that aliases may add to a file beyond its own size, if that is smaller.
    alias_allowance: int = 1 * _MiB

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ReadLimits.{limit.name} must be a positive integer: {value!r}")


DEFAULT_LIMITS: Final = ReadLimits()


@dataclass
class Manifests:
    """Everything read from a set of paths.

    The first valid definition of an object (same kind, namespace and name) is used; a
    later one is rejected as a duplicate, and a later invalid one only reported.
    """

    services: dict[ServiceName, Service] = field(default_factory=dict)
    # Keyed by (namespace, slice name): slice names are unique per namespace, not per Service.
    slices: dict[SliceName, EndpointSlice] = field(default_factory=dict)
    # Cluster-scoped, by name.
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)
    errors: list[InvalidObject] = field(default_factory=list)
    # (object description, reason) for valid objects this proxy does not program.
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    # Objects of other kinds, counted so a wrong file shows up without flooding the log.
    ignored: Counter[str] = field(default_factory=Counter)
    # EndpointSlices rejected whole, by (namespace, name), and the Service each belongs
    # to: that Service's endpoints are not known, so its rules should stay as they are
    # rather than be rebuilt without them.
    incomplete: dict[SliceName, ServiceName] = field(default_factory=dict)
    # Entries of a directory that were not read, and why (a FIFO, a socket, a device).
    warnings: list[str] = field(default_factory=list)


def load_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    service_proxy_name: str | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
    stdin: BinaryIO | None = None,
) -> Manifests:
    """Load every Service and EndpointSlice under `paths` (files or directories; `-` is
    `stdin`, by default the process's standard input).

    Never raises for bad input: unreadable files, files that are no regular files, parse
    errors, broken limits and invalid objects are collected in `Manifests.errors` and
    everything else still loads.
    """
    loader = _Loader(service_proxy_name, limits, stdin)
    with _gc_paused():
        for path in paths:
            loader.load_path(Path(path))
    return loader.result


@contextmanager
def _gc_paused() -> Iterator[None]:
    # A large dump allocates many dicts and rows that are never cyclic garbage; letting the
    # collector rescan them again and again makes loading much slower.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def manifest_files(directory: Path) -> list[Path]:
    """Manifest files below `directory`, sorted, skipping hidden files and directories.

    Skipping hidden entries also avoids reading a mounted ConfigMap twice through its
    `..data` symlink. Symlinked directories are not followed, so cycles cannot occur.
    """
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(root, f)
            for f in files
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in MANIFEST_SUFFIXES
        )
    return sorted(found)


def special_file(path: Path) -> str | None:
    """Why a directory entry is not read, when it is a FIFO, socket or device (or a
    symlink to one): reading a FIFO without a writer would wait forever. None for
    anything else; the reader reports what cannot be read at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{path}: {_not_regular(path, mode)}; skipped"


def broken_symlink(path: Path) -> InvalidObject | None:
    """The error for a symlink that cannot be followed (dangling or looping), else None."""
    try:
        os.stat(path)
    except OSError as exc:
        problem = _symlink_problem(path, exc)
        if problem is not None:
            return _file_error(str(path), "", problem)
    return None


def _symlink_problem(path: Path, exc: OSError) -> str | None:
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return None
    try:
        target = os.readlink(path)
    except OSError:
        return None  # not a symlink (or gone)
    if exc.errno == errno.ELOOP:
        return f"is a symlink to {target}, which loops"
    return f"is a dangling symlink to {target}"


def _file_error(source: str, where: str, message: str) -> InvalidObject:
    """A file (or a document of it) that could not be read or parsed."""
    return InvalidObject("file", "", "", where, message, source=source)


def _document_error(source: str, where: str, message: str) -> InvalidObject:
    """A document that parsed but is no object this reader can name (no kind, not a
    mapping): an invalid object whose identity is unknown."""
    return InvalidObject("document", "", "", where, message, source=source)


class _Unreadable(Exception):
    """A file that cannot be read; the message says why."""


_FILE_TYPES: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: Path, mode: int) -> _Unreadable:
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    try:
        target = f" (a symlink to {os.readlink(path)})"
    except OSError:
        target = ""
    return _Unreadable(f"is {kind}{target}; only regular files are read")


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The file's bytes; _Unreadable for anything but a regular file of at most `limit` bytes.

    Opening never blocks (O_NONBLOCK: a FIFO without a writer) and only regular files are
    read, so a FIFO or a symlink to /dev/zero cannot hang the reader or fill its memory.
    Symlinks to regular files are followed: ConfigMap volumes consist of them.
    """
    try:
        # Checked before opening too, since opening some devices has side effects.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(_os_error_text(path, exc)) from None
    try:
        # The opened file is what counts: the path may have been replaced since the stat.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if st.st_size > limit:
            raise _too_large(limit, st.st_size)
        chunks: list[bytes] = []
        size = 0
        # One byte more than the file's size shows a file that grew after the fstat.
        want = st.st_size + 1
        while size <= limit:
            chunk = os.read(fd, min(want, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            want = _MiB
        if size > limit:
            raise _too_large(limit, None)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        raise _Unreadable(_os_error_text(path, exc)) from None
    finally:
        os.close(fd)


def _read_stream(stream: BinaryIO, limit: int) -> bytes:
    """What a stream (standard input) holds up to its end; _Unreadable beyond `limit`."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = stream.read(min(_MiB, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    if size > limit:
        raise _too_large(limit, None)
    return b"".join(chunks)


def _too_large(limit: int, size: int | None) -> _Unreadable:
    actual = f" ({size:,} bytes)" if size is not None else ""
    return _Unreadable(f"larger than the limit of {limit:,} bytes per file{actual}")


def _os_error_text(path: Path, exc: OSError) -> str:
    return _symlink_problem(path, exc) or exc.strerror or str(exc)


def _yaml_error(source: str, exc: yaml.YAMLError) -> InvalidObject:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return _file_error(source, where, f"invalid YAML: {problem}")


def _type_name(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


# --- JSON: one document, its depth checked before msgspec sees it -------------------------------
#
# msgspec stops at Python's recursion limit (a RecursionError, even at a depth of 10**6), which
# still lets some 900 levels through, depending on where the call stack stands. So brackets
# are counted first, at C speed by bytes methods, in about the time msgspec takes to decode
# the same bytes.

# Translate `{}` to `[]` and delete everything but quotes and brackets.
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS: Final = bytes(range(256)).translate(None, b'"[]{}')
_STRINGS: Final = re.compile(rb'"[^"]*"')


def _json_document(data: bytes, limits: ReadLimits) -> object:
    """The document of a JSON file; _Unreadable if it breaks a limit or is no JSON."""
    if len(data) > limits.max_document_chars:
        raise _Unreadable(
            f"larger than the limit of {limits.max_document_chars:,} characters per document"
        )
    if _nested_deeper(data, limits.max_depth):
        raise _Unreadable(f"nested more than {limits.max_depth} levels deep (the depth limit)")
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise _Unreadable(f"invalid JSON: {exc}") from None
    except RecursionError:  # unbalanced brackets, which the count does not judge
        raise _Unreadable("invalid JSON: nested too deeply") from None


def _nested_deeper(data: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` levels deep."""
    # Brackets in strings do not count: drop escaped backslashes, then escaped quotes, then
    # all but quotes and brackets, then the strings (most are "" by then).
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data
    text = _STRINGS.sub(b"", text.translate(_BRACKETS, _NOT_BRACKETS).replace(b'""', b""))
    # Each pass removes the innermost pairs; a pair left after `limit` passes is deeper.
    for _ in range(limit):
        if not text:
            return False
        text = text.replace(b"[]", b"")
    return b"[]" in text


# --- YAML: data built from libyaml's event stream -------------------------------------------
#
# PyYAML's composer (and libyaml's, behind CSafeLoader) recurses once per nesting level and
# hands aliases on as shared nodes that whoever walks the result expands again and again. The
# event stream is flat: building the data from it with an explicit stack checks depth, size
# and alias expansion before any of it exists, and is faster than CSafeLoader's load on
# kubectl dumps, because it builds no node graph on the way. Scalars resolve exactly
# as SafeLoader resolves them (YAML 1.1: yes/no booleans, 0o12 and 1:30 numbers, timestamps).

_MERGE: Final = object()  # a `<<` merge key, until its mapping is complete
_REJECTED: Final = object()  # stands in for a List item that was rejected and reported
_YAML_TAG: Final = "tag:yaml.org,2002:"
_SCALAR_TAGS: Final = frozenset(
    _YAML_TAG + kind for kind in ("str", "int", "float", "bool", "null", "binary", "timestamp")
)
# Explicit tags that change nothing; set, omap and local tags have no JSON equivalent.
_MAPPING_TAGS: Final = frozenset({"!", _YAML_TAG + "map"})
_SEQUENCE_TAGS: Final = frozenset({"!", _YAML_TAG + "seq"})
# No real number is this long; int() of a long sexagesimal one (1:2:3:...) is quadratic.
_MAX_NUMBER_CHARS: Final = 100
# Plain scalars up to this long are resolved once per file: keys and values repeat.
_CACHED_CHARS: Final = 64
_CACHE_ENTRIES: Final = 50_000
# Scalars between checks of the document's size (mappings and lists check as they close).
_SIZE_CHECK_EVERY: Final = 1024


class _Broken(Exception):
    """A node that breaks a limit or cannot be built; `whole_document` if no part of it can
    be kept (it is too large), else only the List item holding the node is rejected."""

    def __init__(self, message: str, mark: Any, *, whole_document: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.whole_document = whole_document


@dataclass(frozen=True, slots=True)
class _Problem:
    where: str
    message: str


@dataclass(frozen=True, slots=True)
class _Anchored:
    """An open mapping or list with an anchor: what its alias will cost once it is closed."""

    name: str
    start: int  # character index where it starts
    aliased: int  # characters aliases had added to the document when it started
    outer_deepest: int  # the deepest level reached before it started


class _Pairs(list[Any]):
    """An open mapping: its keys and values in turn."""

    __slots__ = ()


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_documents(
    data: bytes, limits: ReadLimits
) -> Iterator[tuple[int, object, list[_Problem]]]:
    """(index from 1, document, problems) for each document of a YAML stream.

    A document that cannot be used is _REJECTED and its problem given. A problem inside an
    item of a document's top-level `items` list (a kubectl List) rejects only that item: it
    becomes _REJECTED in the list. A syntax error raises yaml.YAMLError after the documents
    before it, like kubectl apply.
    """
    loader = _YAML_LOADER(data)
    try:
        reader = _YamlReader(loader, limits, file_size=len(data))
        yield from reader.documents()
    finally:
        loader.dispose()


def read_yaml_document(data: bytes, limits: ReadLimits = DEFAULT_LIMITS) -> object:
    """The first document of a YAML stream, read within `limits` (size, nesting, what
    aliases add): for other YAML the project reads from outside, such as a chart
    repository's index. ValueError says what is wrong and where."""
    if len(data) > limits.max_file_bytes:
        raise ValueError(f"larger than the limit of {limits.max_file_bytes:,} bytes")
    first: object = None
    try:
        # Read to the end: a syntax error anywhere in the stream counts.
        for index, document, problems in _yaml_documents(data, limits):
            if problems:
                raise ValueError("; ".join(f"{p.where}: {p.message}" for p in problems))
            if index == 1 and document is not _REJECTED:
                first = document
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {' '.join(str(exc).split())}") from None
    return first


def read_yaml_documents(
    data: bytes, limits: ReadLimits = DEFAULT_LIMITS
) -> tuple[list[object], list[str]]:
    """Every document of a YAML stream read within `limits` (a chart's rendered manifests,
    say): (the documents that could be read, in order; what was wrong with the others).
    A syntax error ends the stream there and is reported; empty documents are left out."""
    if len(data) > limits.max_file_bytes:
        return [], [f"larger than the limit of {limits.max_file_bytes:,} bytes"]
    documents: list[object] = []
    errors: list[str] = []
    try:
        for index, document, problems in _yaml_documents(data, limits):
            errors += [f"document {index}: {p.where}: {p.message}" for p in problems]
            if document is not _REJECTED and document is not None and not problems:
                documents.append(document)
    except yaml.YAMLError as exc:
        errors.append(f"invalid YAML: {' '.join(str(exc).split())}")
    return documents, errors


class _YamlReader:
    def __init__(self, loader: Any, limits: ReadLimits, file_size: int) -> None:
        self._loader = loader
        self._limits = limits
        self._file_size = file_size
        self._alias_budget = max(limits.alias_allowance, file_size)
        self._aliased = 0  # characters aliases added to the documents read so far
        # A syntax error found inside a document: raised once the document's problems are out.
        self._syntax_error: yaml.YAMLError | None = None
        self._stopped = False  # reading stopped inside a document; see _skip
        self._resolvers: dict[str, list[tuple[str, Any]]] = loader.yaml_implicit_resolvers
        self._cache: dict[str, object] = {}

    def documents(self) -> Iterator[tuple[int, object, list[_Problem]]]:
        get_event = self._loader.get_event
        get_event()  # StreamStartEvent
        index = 0
        while type(event := get_event()) is not yaml.StreamEndEvent:
            index += 1
            document, problems = self._document(event, index)
            yield index, document, problems
            if self._syntax_error is not None:
                raise self._syntax_error
            if self._stopped:
                return

    def _document(self, start: Any, index: int) -> tuple[object, list[_Problem]]:
        # One loop over every event of the document: the locals are deliberate, as is the
        # order of the branches (scalars are most events).
        get_event = self._loader.get_event
        cache = self._cache
        ScalarEvent, AliasEvent = yaml.ScalarEvent, yaml.AliasEvent
        MappingStartEvent, MappingEndEvent = yaml.MappingStartEvent, yaml.MappingEndEvent
        SequenceStartEvent, SequenceEndEvent = yaml.SequenceStartEvent, yaml.SequenceEndEvent
        Pairs = _Pairs
        max_depth = self._limits.max_depth
        max_chars = self._limits.max_document_chars
        alias_budget = self._alias_budget - self._aliased
        doc_start = start.start_mark.index
        problems: list[_Problem] = []
        anchors: dict[str, tuple[object, int, int]] = {}  # name: (value, height, expanded size)
        merging: set[int] = set()  # ids of open mappings that have a `<<` key
        holder: list[Any] = []  # receives the document's root node
        top = holder  # the innermost open mapping (keys and values in turn) or list
        stack: list[list[Any]] = []  # the enclosing ones; len(stack) is top's depth
        opened: list[_Anchored | None] = []  # for each open mapping or list
        items: list[Any] | None = None  # the top-level `items` list, while it is open
        deepest = 0  # the deepest level reached, kept for the heights of anchored nodes
        aliased = 0  # characters aliases added to this document
        countdown = _SIZE_CHECK_EVERY
        event = start
        try:
            while True:
                try:
                    while True:
                        event = get_event()
                        cls = type(event)
                        if cls is ScalarEvent:
                            if event.implicit[0]:  # plain and untagged: resolved
                                text = event.value
                                try:
                                    value = cache[text]
                                except KeyError:
                                    value = self._plain(text, event.start_mark)
                                if value is _MERGE:
                                    # A merge key only where a mapping expects a key.
                                    if type(top) is Pairs and not len(top) % 2:
                                        merging.add(id(top))
                                    else:
                                        value = text
                            elif event.tag is None:  # quoted
                                value = event.value
                            else:
                                value = self._tagged(event)
                            if event.anchor is not None:
                                size = event.end_mark.index - event.start_mark.index
                                anchors[event.anchor] = (value, 0, size)
                            top.append(value)
                            countdown -= 1
                            if not countdown:
                                countdown = _SIZE_CHECK_EVERY
                                if event.end_mark.index - doc_start + aliased > max_chars:
                                    raise self._too_large(event, aliased)
                        elif cls is MappingStartEvent or cls is SequenceStartEvent:
                            # Opened before any check, so that rejecting skips to its end.
                            stack.append(top)
                            depth = len(stack)
                            if cls is MappingStartEvent:
                                top = Pairs()
                            elif (
                                depth == 2
                                and type(top) is Pairs
                                and len(top) % 2
                                and top[-1] == "items"
                            ):
                                top = items = []
                            else:
                                top = []
                            if event.anchor is None:
                                opened.append(None)
                            else:
                                opened.append(
                                    _Anchored(
                                        event.anchor, event.start_mark.index, aliased, deepest
                                    )
                                )
                                deepest = depth
                            if depth > deepest:
                                deepest = depth
                            if depth > max_depth:
                                raise self._too_deep(event)
                            tag = event.tag
                            if tag is not None and tag not in (
                                _MAPPING_TAGS if cls is MappingStartEvent else _SEQUENCE_TAGS
                            ):
                                raise _Broken(f"unsupported tag {tag}", event.start_mark)
                        elif cls is MappingEndEvent or cls is SequenceEndEvent:
                            # Closed before building, so that rejecting does not skip past it.
                            content = top
                            top = stack.pop()
                            anchored = opened.pop()
                            if content is items:
                                items = None
                            if cls is SequenceEndEvent:
                                value = content
                            elif merging and id(content) in merging:
                                merging.discard(id(content))
                                value = _merged(content, event.start_mark)
                            else:
                                pairs = iter(content)
                                try:
                                    value = dict(zip(pairs, pairs, strict=True))
                                except TypeError:
                                    raise _unhashable_key(event.start_mark) from None
                                if 2 * len(value) != len(content):
                                    raise _duplicate_key(content, event.start_mark)
                            if anchored is not None:
                                depth = len(stack) + 1
                                expanded = (
                                    event.end_mark.index
                                    - anchored.start
                                    + aliased
                                    - anchored.aliased
                                )
                                anchors[anchored.name] = (value, deepest - depth + 1, expanded)
                                deepest = max(deepest, anchored.outer_deepest)
                            top.append(value)
                            if event.end_mark.index - doc_start + aliased > max_chars:
                                raise self._too_large(event, aliased)
                        elif cls is AliasEvent:
                            try:
                                value, height, size = anchors[event.anchor]
                            except KeyError:
                                raise _unknown_alias(event, opened) from None
                            if height:
                                reach = len(stack) + height
                                if reach > max_depth:
                                    raise self._too_deep(event)
                                deepest = max(deepest, reach)
                            aliased += size
                            if aliased > alias_budget:
                                raise self._aliases_too_large(event)
                            if event.end_mark.index - doc_start + aliased > max_chars:
                                raise self._too_large(event, aliased)
                            top.append(value)
                        else:  # DocumentEndEvent
                            break
                    break
                except _Broken as broken:
                    in_item = items is not None and (
                        (len(stack) > 2 and stack[2] is items)
                        # Not when `items` itself was just opened: that is no item of it.
                        or (top is items and cls is not SequenceStartEvent)
                    )
                    if broken.whole_document or not in_item:
                        where = f"document {index}, {_at(broken.mark)}"
                        problems.append(_Problem(where, broken.message))
                        if self._skip(len(stack), 0, index, problems):
                            get_event()  # DocumentEndEvent
                        return _REJECTED, problems
                    # Skip to the end of the item that holds the broken node, and go on.
                    assert items is not None
                    where = f"document {index}.items[{len(items)}], {_at(broken.mark)}"
                    problems.append(_Problem(where, broken.message))
                    if not self._skip(len(stack), 2, index, problems):
                        return _REJECTED, problems
                    top = items
                    del stack[2:]
                    del opened[2:]
                    items.append(_REJECTED)
        except yaml.YAMLError as exc:
            # The stream is broken: no later event, so no end of this document either.
            self._syntax_error = exc
            return _REJECTED, problems
        self._aliased += aliased
        return (holder[0] if holder else None), problems

    def _skip(self, depth: int, until: int, index: int, problems: list[_Problem]) -> bool:
        """Read on until `depth` open mappings and lists are closed down to `until`.

        What is skipped may be the deep part that broke the depth limit, so it may nest
        deeper, but not without end: the scanner's cost per event grows with the depth (in
        C and in pure Python). Past twice the limit, reading the file stops: False.
        """
        get_event = self._loader.get_event
        ceiling = 2 * self._limits.max_depth
        while depth > until:
            event = get_event()
            cls = type(event)
            if cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                depth += 1
                if depth > ceiling:
                    where = f"document {index}, {_at(event.start_mark)}"
                    message = (
                        f"nested more than {ceiling} levels deep; the rest of the file is not read"
                    )
                    problems.append(_Problem(where, message))
                    self._stopped = True
                    return False
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                depth -= 1
        return True

    def _plain(self, text: str, mark: Any) -> object:
        for tag, pattern in self._resolvers.get(text[:1], ()):
            if pattern.match(text):
                value = self._construct(tag, text, mark, None)
                break
        else:
            value = text
        if len(text) <= _CACHED_CHARS:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[text] = value
        return value

    def _tagged(self, event: Any) -> object:
        tag = event.tag
        if tag == "!":  # the non-specific tag of a quoted scalar: a string
            return event.value
        if tag not in _SCALAR_TAGS:
            raise _Broken(f"unsupported tag {tag}", event.start_mark)
        return self._construct(tag, event.value, event.start_mark, event.style)

    def _construct(self, tag: str, text: str, mark: Any, style: str | None) -> object:
        kind = tag.removeprefix(_YAML_TAG)
        if kind == "merge":
            return _MERGE
        if kind == "value":  # `=`, which SafeLoader only accepts as a key
            return text
        if kind in ("int", "float") and len(text) > _MAX_NUMBER_CHARS:
            raise _Broken(f"a number of {len(text):,} characters", mark)
        construct = self._loader.yaml_constructors.get(tag)
        if construct is None:
            raise _Broken(f"unsupported tag {tag}", mark)
        try:
            return construct(self._loader, yaml.ScalarNode(tag, text, mark, mark, style))
        except yaml.YAMLError as exc:  # !!binary that is not base64
            raise _Broken(getattr(exc, "problem", None) or str(exc), mark) from None
        except Exception as exc:  # a timestamp like 2024-13-45, `!!int ""`: PyYAML's own
            raise _Broken(f"cannot read {text[:40]!r} as {kind}: {exc}", mark) from None

    def _too_deep(self, event: Any) -> _Broken:
        what = f"alias *{event.anchor} nests" if isinstance(event, yaml.AliasEvent) else "nested"
        return _Broken(
            f"{what} more than {self._limits.max_depth} levels deep (the depth limit)",
            event.start_mark,
        )

    def _aliases_too_large(self, event: Any) -> _Broken:
        return _Broken(
            f"aliases would add more than {self._alias_budget:,} characters, the most allowed "
            f"for a file of {self._file_size:,} bytes",
            event.start_mark,
            whole_document=True,
        )

    def _too_large(self, event: Any, aliased: int) -> _Broken:
        expanded = " with its aliases expanded" if aliased else ""
        return _Broken(
            f"the document is larger{expanded} than the limit of "
            f"{self._limits.max_document_chars:,} characters per document",
            event.start_mark,
            whole_document=True,
        )


def _merged(content: list[Any], mark: Any) -> dict[Any, Any]:
    """A mapping with `<<` keys, merged as the YAML merge key type says: its own keys win,
    then those merged first (of a list of mappings, the earlier ones)."""
    merged: dict[Any, Any] = {}
    own: list[tuple[Any, Any]] = []
    pairs = iter(content)
    for key, value in zip(pairs, pairs, strict=True):
        if key is not _MERGE:
            own.append((key, value))
            continue
        sources = [value] if isinstance(value, dict) else value
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            message = f"<< merges a mapping or a list of mappings, not {_type_name(value)}"
            raise _Broken(message, mark)
        for source in sources:
            for merged_key, merged_value in source.items():
                merged.setdefault(merged_key, merged_value)
    try:
        merged.update(own)
        if len(dict(own)) != len(own):
            raise _duplicate_key([part for pair in own for part in pair], mark)
    except TypeError:
        raise _unhashable_key(mark) from None
    return merged


def _duplicate_key(content: list[Any], mark: Any) -> _Broken:
    """kubectl refuses a mapping that sets a key twice; silently keeping the last value
    would hide, say, two manifests concatenated without `---` between them."""
    seen: set[Any] = set()
    for key in content[::2]:
        if key in seen:
            return _Broken(f"key {_key_text(key)} is set twice in one mapping", mark)
        seen.add(key)
    return _Broken("a key is set twice in one mapping", mark)


def _key_text(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def _unhashable_key(mark: Any) -> _Broken:
    return _Broken("a mapping or a list is used as a mapping key", mark)


def _unknown_alias(event: Any, opened: list[_Anchored | None]) -> _Broken:
    name = event.anchor
    if any(a is not None and a.name == name for a in opened):
        return _Broken(f"alias *{name} is inside the node it refers to", event.start_mark)
    return _Broken(f"alias *{name} has no anchor &{name} before it", event.start_mark)


class _Loader:
    def __init__(
        self, service_proxy_name: str | None, limits: ReadLimits, stdin: BinaryIO | None = None
    ) -> None:
        self.result = Manifests()
        self._proxy_name = service_proxy_name
        self._limits = limits
        self._stdin = stdin
        # The first definition of each (kind, namespace, name): "file: document N".
        self._defined: dict[tuple[str, str, str], str] = {}
        self._read: set[str] = set()  # files read, by real path: each is read once

    def load_path(self, path: Path) -> None:
        if str(path) == STDIN:
            self._load_stdin()
            return
        try:
            if path.is_dir():
                files = []
                for file in manifest_files(path):
                    skipped = special_file(file)
                    if skipped is None:
                        files.append(file)
                    else:
                        self.result.warnings.append(skipped)
            elif path.exists() or path.is_symlink():
                # An explicitly named file is read whatever its suffix or hidden status.
                files = [path]
            else:
                files = []
                self.result.errors.append(_file_error(str(path), "", "no such file or directory"))
        except OSError as exc:  # is_dir() raises EACCES
            self.result.errors.append(_file_error(str(path), "", _os_error_text(path, exc)))
            return
        for file in files:
            self.load_file(file)

    def _load_stdin(self) -> None:
        stream = self._stdin if self._stdin is not None else sys.stdin.buffer
        try:
            data = _read_stream(stream, self._limits.max_file_bytes)
        except _Unreadable as exc:
            self.result.errors.append(_file_error(STDIN_SOURCE, "", str(exc)))
            return
        # kubectl's -o json starts with a brace; anything else is YAML.
        self._load_data(data, STDIN_SOURCE, is_json=data.lstrip()[:1] in (b"{", b"["))

    def load_file(self, path: Path) -> None:
        """Load one file; whatever goes wrong is an error naming it, never an exception."""
        source = str(path)
        real = os.path.realpath(path)
        if real in self._read:
            return  # named twice (a directory and a file in it): its objects are no duplicates
        self._read.add(real)
        try:
            self._load_file(path, source)
        except Exception as exc:
            # Not expected (every known problem is reported where it is found), but a bug, or
            # memory running out, must cost this file only.
            message = f"could not be loaded: {type(exc).__name__}: {str(exc)[:200]}"
            self.result.errors.append(_file_error(source, "", message))

    def _load_file(self, path: Path, source: str) -> None:
        try:
            data = _read_regular_file(path, self._limits.max_file_bytes)
        except _Unreadable as exc:
            self.result.errors.append(_file_error(source, "", str(exc)))
            return
        self._load_data(data, source, is_json=path.suffix.lower() == ".json")

    def _load_data(self, data: bytes, source: str, *, is_json: bool) -> None:
        if is_json:
            try:
                document = _json_document(data, self._limits)
            except _Unreadable as exc:
                self.result.errors.append(_file_error(source, "", str(exc)))
                return
            self._document(document, source, 1)
            return
        try:
            for index, document, problems in _yaml_documents(data, self._limits):
                for problem in problems:
                    self.result.errors.append(_file_error(source, problem.where, problem.message))
                if document is not _REJECTED:
                    try:
                        self._document(document, source, index)
                    except Exception as exc:  # as in load_file, for this document only
                        message = f"could not be loaded: {type(exc).__name__}: {str(exc)[:200]}"
                        self.result.errors.append(_file_error(source, f"document {index}", message))
        except yaml.YAMLError as exc:
            self.result.errors.append(_yaml_error(source, exc))

    def _document(self, document: object, source: str, index: int) -> None:
        if document is not None:
            self._object(document, source, f"document {index}", None, "")

    def _object(
        self, obj: object, source: str, where: str, list_kind: str | None, list_api: str
    ) -> None:
        if not isinstance(obj, dict):
            message = f"expected a mapping, got {_type_name(obj)}"
            self.result.errors.append(_document_error(source, where, message))
            return
        # Items of typed lists (ServiceList, ...) may omit kind and apiVersion.
        kind = obj.get("kind") or list_kind
        api = obj.get("apiVersion") or list_api
        if not isinstance(kind, str):
            self.result.errors.append(_document_error(source, where, "kind is missing"))
            return
        if not isinstance(api, str):
            self.result.errors.append(_document_error(source, where, "apiVersion is not a string"))
            return
        if kind.endswith("List") and "items" in obj:
            self._list(obj["items"], source, where, kind[: -len("List")] or None, api)
        elif kind == "Service" and "/" not in api:
            self._service(obj, api, source, where)
        elif kind == "EndpointSlice" and (not api or api.startswith(_SLICE_GROUP)):
            self._slice(obj, api, source, where)
        elif kind == "ServiceCIDR" and (not api or api.startswith(_NETWORKING_GROUP)):
            self._service_cidr(obj, api, source, where)
        else:
            # Same-named kinds of other API groups (e.g. Knative's Service) are not ours.
            self.result.ignored[kind] += 1

    def _list(
        self, items: object, source: str, where: str, item_kind: str | None, list_api: str
    ) -> None:
        if items is None:
            return
        if not isinstance(items, list):
            message = f"items: expected a list, got {_type_name(items)}"
            self.result.errors.append(_document_error(source, where, message))
            return
        # A plain `List` holds mixed kinds, so its apiVersion says nothing about the items.
        item_api = list_api if item_kind else ""
        for i, item in enumerate(items):
            if item is not _REJECTED:  # reported already
                self._object(item, source, f"{where}.items[{i}]", item_kind, item_api)

    def _service(self, obj: dict[str, Any], api: str, source: str, where: str) -> None:
        try:
            _check_api("Service", api, _SERVICE_API, obj)
            raw = from_builtins(obj, RawService)
            converted = to_service(raw, service_proxy_name=self._proxy_name)
        except InvalidObject as exc:
            self._reject(exc, source)
            return
        if not self._first("Service", _raw_identity(raw), source, where):
            return
        if isinstance(converted, Skip):
            sid = ServiceName(*_raw_identity(raw))
            self.result.skipped.append((f"{source}: Service {sid}", converted.reason))
        else:
            self.result.services[converted.id] = converted

    def _slice(self, obj: dict[str, Any], api: str, source: str, where: str) -> None:
        try:
            _check_api("EndpointSlice", api, _SLICE_API, obj)
            raw = from_builtins(obj, RawEndpointSlice)
            problems: list[InvalidObject] = []
            converted = to_slice(raw, report=problems.append)
        except InvalidObject as exc:
            self._reject(exc, source)
            owner = _service_of(obj)
            if owner is not None:
                self.result.incomplete[exc.namespace, exc.name] = owner
            return
        if not self._first("EndpointSlice", _raw_identity(raw), source, where):
            return
        for problem in problems:
            self._reject(problem, source)
        if isinstance(converted, Skip):
            key = _raw_identity(raw)
            description = f"{source}: EndpointSlice {key[0]}/{key[1]}"
            self.result.skipped.append((description, converted.reason))
        else:
            self.result.slices[converted.namespace, converted.name] = converted

    def _service_cidr(self, obj: dict[str, Any], api: str, source: str, where: str) -> None:
        try:
            # v1beta1 has the same shape; clusters upgraded from 1.31 may still print it.
            if api != "networking.k8s.io/v1beta1":
                _check_api("ServiceCIDR", api, _SERVICE_CIDR_API, obj, namespaced=False)
            converted = to_service_cidr(from_builtins(obj, RawServiceCIDR))
        except InvalidObject as exc:
            self._reject(exc, source)
            return
        if self._first("ServiceCIDR", ("", converted.name), source, where):
            self.result.service_cidrs[converted.name] = converted

    def _first(self, kind: str, key: tuple[str, str], source: str, where: str) -> bool:
        """Whether this is the object's first definition; a later one is rejected, naming
        both (the API cannot hold two, so one of the inputs is wrong)."""
        here = f"{source}: {where}"
        first = self._defined.setdefault((kind, *key), here)
        if first != here:
            message = f"duplicate: {where} defines it again after {first}, which is used"
            self._reject(InvalidObject(kind, key[0], key[1], "", message), source)
        return first == here

    def _reject(self, exc: InvalidObject, source: str) -> None:
        exc.source = source
        self.result.errors.append(exc)


def _service_of(obj: dict[str, Any]) -> ServiceName | None:
    """The Service an EndpointSlice that failed validation belongs to, when its namespace
    and label can still be read."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    namespace = (meta.get("namespace") if isinstance(meta, dict) else None) or "default"
    if isinstance(service, str) and service and isinstance(namespace, str):
        return ServiceName(namespace, service)
    return None


def _raw_identity(raw: RawService | RawEndpointSlice) -> tuple[str, str]:
    # Only reached after conversion succeeded, so metadata.name is known to be present.
    meta = raw.metadata
    return (meta.namespace or "default", meta.name) if meta else ("default", "")


def _check_api(
    kind: str, api: str, supported: str, obj: dict[str, Any], *, namespaced: bool = True
) -> None:
    if api in ("", supported):
        return
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    namespace = (meta.get("namespace") or "default") if namespaced else ""
    name = meta.get("name") or ""
    raise InvalidObject(
        kind,
        namespace if isinstance(namespace, str) else "",
        name if isinstance(name, str) else "",
        "apiVersion",
        f'"{api}" is not supported; use {supported}',
    )
