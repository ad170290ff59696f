"""Services and EndpointSlices read from YAML/JSON manifests instead of a live API server.

Lets nftproxy run from `kubectl get svc,endpointslices -A -o yaml` dumps or hand-written
files (tests, benchmarks, static setups) through exactly the validation the watcher uses.
"""

from __future__ import annotations

import gc
import os
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml

from nftproxy.kube.objects import (
    InvalidObject,
    RawEndpointSlice,
    RawService,
    Skip,
    from_builtins,
    to_service,
    to_slice,
)
from nftproxy.model import EndpointSlice, Service, ServiceName

__all__ = [
    "DEFAULT_LIMITS",
    "MANIFEST_SUFFIXES",
    "Manifests",
    "ReadLimits",
    "load_paths",
    "manifest_files",
]

MANIFEST_SUFFIXES: Final = frozenset({".yaml", ".yml", ".json"})

_MiB: Final = 1 << 20

# The C loader is ~10x faster on large kubectl dumps; pure Python is the portable fallback.
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_SERVICE_API: Final = "v1"
_SLICE_API: Final = "discovery.k8s.io/v1"
_SLICE_GROUP: Final = "discovery.k8s.io/"


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What reading one manifest file may cost at most; the module docstring says why."""

    # Bytes read from one file, which is held in memory whole while it is decoded.
    max_file_bytes: int = 256 * _MiB

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ReadLimits.{limit.name} must be a positive integer: {value!r}")


DEFAULT_LIMITS: Final = ReadLimits()


@dataclass
class Manifests:
    """Everything read from a set of paths.

    A later valid definition of an object (same kind, namespace and name) replaces an earlier
    one; a later invalid one is only reported, and the earlier valid one stays, as it does in
    a watched directory.
    """

    services: dict[ServiceName, Service] = field(default_factory=dict)
    # Keyed by (namespace, slice name): slice names are unique per namespace, not per Service.
    slices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    errors: list[InvalidObject] = field(default_factory=list)
    # (object description, reason) for valid objects this proxy does not program.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Objects of other kinds, counted so a wrong file shows up without flooding the log.
    ignored: Counter[str] = field(default_factory=Counter)


def load_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    service_proxy_name: str | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> Manifests:
    """Load every Service and EndpointSlice under `paths` (files or directories).

    Never raises for bad input: unreadable files, files that are no regular files, parse
    errors, broken limits and invalid objects are collected in `Manifests.errors` and
    everything else still loads.
    """
    loader = _Loader(service_proxy_name, limits)
    with _gc_paused():
        for path in paths:
            loader.load_path(Path(path))
    return loader.result


@contextmanager
def _gc_paused() -> Iterator[None]:
    # A large dump allocates millions of dicts and rows that are never cyclic garbage; letting
    # the collector rescan them repeatedly roughly doubles load time.
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


def _file_error(source: str, where: str, message: str) -> InvalidObject:
    return InvalidObject("file", "", "", where, message, source=source)


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


def _too_large(limit: int, size: int | None) -> _Unreadable:
    actual = f" ({size:,} bytes)" if size is not None else ""
    return _Unreadable(f"larger than the limit of {limit:,} bytes per file{actual}")


def _os_error_text(path: Path, exc: OSError) -> str:
    return exc.strerror or str(exc)


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


class _Loader:
    def __init__(self, service_proxy_name: str | None, limits: ReadLimits) -> None:
        self.result = Manifests()
        self._proxy_name = service_proxy_name
        self._limits = limits

    def load_path(self, path: Path) -> None:
        if path.is_dir():
            for file in manifest_files(path):
                self.load_file(file)
        elif path.exists():
            # An explicitly named file is read whatever its suffix or hidden status.
            self.load_file(path)
        else:
            self.result.errors.append(_file_error(str(path), "", "no such file or directory"))

    def load_file(self, path: Path) -> None:
        source = str(path)
        try:
            data = _read_regular_file(path, self._limits.max_file_bytes)
        except _Unreadable as exc:
            self.result.errors.append(_file_error(source, "", str(exc)))
            return
        if path.suffix.lower() == ".json":
            try:
                document = msgspec.json.decode(data)
            except msgspec.DecodeError as exc:
                self.result.errors.append(_file_error(source, "", f"invalid JSON: {exc}"))
                return
            self._document(document, source, 1)
            return
        try:
            # Documents stream: those before a syntax error still load, like kubectl apply.
            for index, document in enumerate(yaml.load_all(data, Loader=_YAML_LOADER), 1):
                self._document(document, source, index)
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
            self.result.errors.append(_file_error(source, where, message))
            return
        # Items of typed lists (ServiceList, ...) may omit kind and apiVersion.
        kind = obj.get("kind") or list_kind
        api = obj.get("apiVersion") or list_api
        if not isinstance(kind, str):
            self.result.errors.append(_file_error(source, where, "kind is missing"))
            return
        if not isinstance(api, str):
            self.result.errors.append(_file_error(source, where, "apiVersion is not a string"))
            return
        if kind.endswith("List") and "items" in obj:
            self._list(obj["items"], source, where, kind[: -len("List")] or None, api)
        elif kind == "Service" and "/" not in api:
            self._service(obj, api, source)
        elif kind == "EndpointSlice" and (not api or api.startswith(_SLICE_GROUP)):
            self._slice(obj, api, source)
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
            self.result.errors.append(_file_error(source, where, message))
            return
        # A plain `List` holds mixed kinds, so its apiVersion says nothing about the items.
        item_api = list_api if item_kind else ""
        for i, item in enumerate(items):
            self._object(item, source, f"{where}.items[{i}]", item_kind, item_api)

    def _service(self, obj: dict[str, Any], api: str, source: str) -> None:
        try:
            _check_api("Service", api, _SERVICE_API, obj)
            raw = from_builtins(obj, RawService)
            converted = to_service(raw, service_proxy_name=self._proxy_name)
        except InvalidObject as exc:
            self._reject(exc, source)
            return
        if isinstance(converted, Skip):
            sid = ServiceName(*_raw_identity(raw))
            self.result.services.pop(sid, None)
            self.result.skipped.append((f"{source}: Service {sid}", converted.reason))
        else:
            self.result.services[converted.id] = converted

    def _slice(self, obj: dict[str, Any], api: str, source: str) -> None:
        try:
            _check_api("EndpointSlice", api, _SLICE_API, obj)
            raw = from_builtins(obj, RawEndpointSlice)
            converted = to_slice(raw, report=lambda bad: self._reject(bad, source))
        except InvalidObject as exc:
            self._reject(exc, source)
            return
        if isinstance(converted, Skip):
            key = _raw_identity(raw)
            self.result.slices.pop(key, None)
            description = f"{source}: EndpointSlice {key[0]}/{key[1]}"
            self.result.skipped.append((description, converted.reason))
        else:
            self.result.slices[converted.namespace, converted.name] = converted

    def _reject(self, exc: InvalidObject, source: str) -> None:
        exc.source = source
        self.result.errors.append(exc)


def _raw_identity(raw: RawService | RawEndpointSlice) -> tuple[str, str]:
    # Only reached after conversion succeeded, so metadata.name is known to be present.
    meta = raw.metadata
    return (meta.namespace or "default", meta.name) if meta else ("default", "")


def _check_api(kind: str, api: str, supported: str, obj: dict[str, Any]) -> None:
    if api in ("", supported):
        return
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    raise InvalidObject(
        kind,
        namespace if isinstance(namespace, str) else "",
        name if isinstance(name, str) else "",
        "apiVersion",
        f'"{api}" is not supported; use {supported}',
    )
