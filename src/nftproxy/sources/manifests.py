"""Services and EndpointSlices read from YAML/JSON manifests instead of a live API server.

Lets nftproxy run from `kubectl get svc,endpointslices -A -o yaml` dumps or hand-written
files (tests, benchmarks, static setups) through exactly the validation the watcher uses.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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

__all__ = ["MANIFEST_SUFFIXES", "Manifests", "load_paths", "manifest_files"]

MANIFEST_SUFFIXES: Final = frozenset({".yaml", ".yml", ".json"})

# The C loader is ~10x faster on large kubectl dumps; pure Python is the portable fallback.
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_SERVICE_API: Final = "v1"
_SLICE_API: Final = "discovery.k8s.io/v1"
_SLICE_GROUP: Final = "discovery.k8s.io/"


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
    paths: Sequence[str | os.PathLike[str]], *, service_proxy_name: str | None = None
) -> Manifests:
    """Load every Service and EndpointSlice under `paths` (files or directories).

    Never raises for bad input: unreadable files, parse errors and invalid objects are
    collected in `Manifests.errors` and everything else still loads.
    """
    loader = _Loader(service_proxy_name)
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
    def __init__(self, service_proxy_name: str | None) -> None:
        self.result = Manifests()
        self._proxy_name = service_proxy_name

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
            data = path.read_bytes()
        except OSError as exc:
            self.result.errors.append(_file_error(source, "", exc.strerror or str(exc)))
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
