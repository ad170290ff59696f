"""Helm releases read straight from the Secrets helm keeps them in, with the user's own token.

helm stores every revision of a release as a Secret of type `helm.sh/release.v1` in the
release's namespace, labelled `owner=helm`, `name`, `version` (the revision) and `status`;
its `release` key holds the release as gzipped JSON, base64-encoded once more by helm.
Reading them here costs one API call per namespace (or one for the whole cluster when the
user may list Secrets everywhere) instead of one helm process each, and the list of
revisions comes as metadata only: a release is decoded once per revision and remembered by
its Secret's resourceVersion. Changes still go through helm.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import yaml

from nftproxy.dashboard.helm import ApiServer, Credentials, check_namespace, check_release_name
from nftproxy.kube.client import ApiError, Client

__all__ = [
    "DECODED_REVISIONS",
    "LIVE_STATES",
    "MAX_MANIFEST_CHARS",
    "MAX_RELEASE_BYTES",
    "MAX_VALUES_BYTES",
    "History",
    "Release",
    "ReleaseDetail",
    "ReleaseError",
    "ReleaseReader",
    "Releases",
    "StoredRelease",
    "decode_release",
    "latest_revisions",
    "summary",
    "timestamp_text",
    "values_of",
]

# Decompressed. A release Secret is at most 1 MiB; its chart's files make most of it, and
# they are skipped, not built.
MAX_RELEASE_BYTES = 8 << 20
MAX_VALUES_BYTES = 128 << 10  # the values a user gave, shown on the app page as YAML
MAX_VALUES_DEPTH = 64
MAX_MANIFEST_CHARS = 2 << 20  # the manifests an app page reads objects from
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
# A revision that is the release's current one is in one of these states: listing only
# them leaves out every superseded revision's data.
LIVE_STATES = (
    "deployed",
    "failed",
    "pending-install",
    "pending-upgrade",
    "pending-rollback",
    "uninstalling",
    "unknown",
)
_LISTS_AT_ONCE = 8
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's, when there
_CACHED = 20_000
_DETAILS = 16  # newest revisions kept in full (the live app pages)
DECODED_REVISIONS = 32  # of one release's history; helm keeps 10 by default
MAX_NOTES_CHARS = 64 << 10
_USERS_KEPT = 256  # users whose connections stay open


class ReleaseError(Exception):
    """A release Secret that cannot be read; the message names it."""


@dataclass(frozen=True, slots=True)
class Release:
    """What the app list shows of a release's revision."""

    name: str
    namespace: str
    revision: int
    status: str
    chart: str
    chart_version: str
    app_version: str
    updated: str  # as helm wrote it (RFC 3339)
    description: str = ""

    @property
    def chart_label(self) -> str:
        return f"{self.chart}-{self.chart_version}"

    @property
    def updated_text(self) -> str:
        return timestamp_text(self.updated)


@dataclass(frozen=True, slots=True)
class ReleaseDetail:
    """One revision in full, as the app page needs it."""

    release: Release
    values: Mapping[str, Any]  # the values the user gave (not the chart's defaults)
    manifest: str
    notes: str
    problem: str = ""  # what of it is too large or broken to show
    values_yaml: str = "{}\n"  # the values as the page shows them, made once


@dataclass(frozen=True, slots=True)
class History:
    releases: list[Release]  # every revision, oldest first
    latest: ReleaseDetail | None  # the newest in full; None when there is none


@dataclass(frozen=True, slots=True)
class Releases:
    """The releases a user may see in some namespaces, and which namespaces said no."""

    by_namespace: Mapping[str, list[Release]]
    refused: frozenset[str]  # namespaces where the user may not list releases
    problems: Mapping[str, str]  # namespace -> why it could not be read


def timestamp_text(text: str) -> str:
    """helm's RFC 3339 time (nanoseconds, any offset) as `2026-12-07 03:55:12 UTC`."""
    if not text:
        return ""
    head, _, _ = text.partition(".")
    zone = text[len(head) :].lstrip(".0123456789") if "." in text else text[19:]
    try:
        when = datetime.fromisoformat(head[:19] + (zone if zone not in ("", "Z") else "+00:00"))
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError):  # a Secret's content is anyone's who may write it
        return text[:40]


class _ChartMeta(msgspec.Struct):
    name: str = ""
    version: str = ""
    appVersion: str = ""


class _Chart(msgspec.Struct):
    metadata: _ChartMeta | None = None


class _Info(msgspec.Struct):
    status: str = ""
    first_deployed: str = ""
    last_deployed: str = ""
    description: str = ""
    notes: str = ""


class StoredRelease(msgspec.Struct):
    """What the dashboard reads of a stored release. The rest (the chart's templates,
    files, default values, hooks) is skipped while decoding, never built; the values given
    stay raw until the app page asks for them."""

    name: str = ""
    namespace: str = ""
    version: int = 0
    info: _Info | None = None
    chart: _Chart | None = None
    config: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    manifest: str = ""


class _BriefRelease(msgspec.Struct):
    """A revision as its history line shows it: no values, no manifests."""

    name: str = ""
    namespace: str = ""
    version: int = 0
    info: _Info | None = None
    chart: _Chart | None = None


_R = TypeVar("_R", StoredRelease, _BriefRelease)


def decode_release(
    data: str | bytes,
    what: str = "release",
    into: type[_R] = StoredRelease,  # type: ignore[assignment]
) -> _R:
    """A release as helm stores it: base64 of gzipped JSON (plain JSON also read), within
    MAX_RELEASE_BYTES once decompressed."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError(f"{what}: not base64") from None
    if raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, MAX_RELEASE_BYTES + 1)
        except zlib.error as exc:
            raise ReleaseError(f"{what}: not gzip: {exc}") from None
        if len(raw) > MAX_RELEASE_BYTES or inflater.unconsumed_tail:
            raise ReleaseError(f"{what}: larger than {MAX_RELEASE_BYTES >> 20} MiB unpacked")
    elif len(raw) > MAX_RELEASE_BYTES:
        raise ReleaseError(f"{what}: larger than {MAX_RELEASE_BYTES >> 20} MiB")
    try:
        return msgspec.json.decode(raw, type=into)
    except msgspec.ValidationError as exc:
        raise ReleaseError(f"{what}: not a release: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ReleaseError(f"{what}: not JSON: {exc}") from None


def values_of(stored: StoredRelease, what: str = "release") -> dict[str, Any]:
    """The values the user gave the release, within MAX_VALUES_BYTES and nesting."""
    raw = bytes(stored.config)
    if len(raw) > MAX_VALUES_BYTES:
        raise ReleaseError(f"{what}: its values are larger than {MAX_VALUES_BYTES >> 10} KiB")
    try:
        values = msgspec.json.decode(raw) if raw else None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ReleaseError(f"{what}: its values are not JSON: {exc}") from None
    if not _shallow(values, MAX_VALUES_DEPTH):
        raise ReleaseError(f"{what}: its values nest deeper than {MAX_VALUES_DEPTH} levels")
    return values if isinstance(values, dict) else {}


def _shallow(value: object, limit: int) -> bool:
    """Whether `value` nests no deeper than `limit` (walked without recursion)."""
    level: list[object] = [value]
    for _ in range(limit + 1):
        deeper: list[object] = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(item.values())
            elif isinstance(item, list):
                deeper.extend(item)
        if not deeper:
            return True
        level = deeper
    return False


def summary(stored: StoredRelease | _BriefRelease, namespace: str) -> Release:
    """The app list's view of a decoded release."""
    info = stored.info or _Info()
    meta = (stored.chart.metadata if stored.chart else None) or _ChartMeta()
    return Release(
        name=stored.name,
        namespace=stored.namespace or namespace,
        revision=stored.version,
        status=info.status or "unknown",
        chart=meta.name,
        chart_version=meta.version,
        app_version=meta.appVersion,
        updated=info.last_deployed or info.first_deployed,
        description=info.description,
    )


def _revision(labels: Mapping[str, Any]) -> int:
    text = str(labels.get("version", ""))
    return int(text) if text.isdigit() else 0


def latest_revisions(
    items: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The newest revision's Secret metadata of each release, by (namespace, release)."""
    newest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for item in items:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get("owner") != "helm" or not labels.get("name"):
            continue
        key = (str(meta.get("namespace", "")), str(labels["name"]))
        seen = newest.get(key)
        if seen is None or _revision(labels) > _revision(seen.get("labels") or {}):
            newest[key] = meta
    return newest


def _secret_release(
    secret: Mapping[str, Any],
    into: type[_R] = StoredRelease,  # type: ignore[assignment]
) -> _R:
    meta = secret.get("metadata") or {}
    what = f"Secret {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    data = (secret.get("data") or {}).get("release")
    if not isinstance(data, str):
        raise ReleaseError(f"{what}: no release in it")
    try:
        inner = base64.b64decode(data, validate=True)  # the API's own base64 of Secret data
    except (binascii.Error, ValueError):
        raise ReleaseError(f"{what}: data.release is not base64") from None
    return decode_release(inner, what, into)


class ReleaseReader:
    """Reads releases with each user's token; remembers decoded summaries by Secret
    resourceVersion (shared between users: a summary is only handed to a user whose own
    list named that Secret's resourceVersion)."""

    def __init__(self, server: ApiServer, *, timeout: float = 10.0, cached: int = _CACHED):
        self.server = server
        self.timeout = timeout
        self._cached = cached
        self._lock = threading.Lock()
        self._summaries: OrderedDict[tuple[str, str, str], Release] = OrderedDict()
        self._details: OrderedDict[tuple[str, str, str], ReleaseDetail] = OrderedDict()
        self._clients: OrderedDict[str, Client] = OrderedDict()

    def client(self, user: Credentials) -> Client:
        """The user's client, its connections kept between requests (a page asks one list
        per namespace: a TLS handshake each would cost more than the lists)."""
        with self._lock:
            kept = self._clients.get(user.key)
            if kept is not None:
                self._clients.move_to_end(user.key)
                return kept
        client = Client(self.server.config(user), timeout=self.timeout, keep_alive=_LISTS_AT_ONCE)
        with self._lock:
            self._clients[user.key] = client
            while len(self._clients) > _USERS_KEPT:
                _, old = self._clients.popitem(last=False)
                old.close()
        return client

    def close(self) -> None:
        """Close every user's kept connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            client.close()

    def forget(self, user: Credentials) -> None:
        """Close the user's kept connections (they signed out)."""
        with self._lock:
            client = self._clients.pop(user.key, None)
        if client is not None:
            client.close()

    # --- the app list ---------------------------------------------------------------------

    def current(self, user: Credentials, namespaces: Iterable[str]) -> Releases:
        """The current revision of every release in `namespaces` the user may see."""
        wanted = sorted(set(namespaces))
        client = self.client(user)
        # resourceVersion 0: served from the API server's watch cache, without asking etcd
        # for its current revision first (a list per namespace; the page may lag the cluster
        # by the cache's few milliseconds, and the live stream follows within seconds).
        selector = {"labelSelector": "owner=helm", "resourceVersion": "0"}
        metas: list[Mapping[str, Any]] = []
        refused: set[str] = set()
        problems: dict[str, str] = {}
        try:  # one call when the user may list Secrets in every namespace
            everything = client.get("/api/v1/secrets", selector, accept=METADATA_LIST)
            metas = [
                i for i in json.loads(everything).get("items") or [] if _namespace(i) in wanted
            ]
        except ApiError as exc:
            if exc.status not in (401, 403):
                raise

            def one(ns: str) -> tuple[str, list[Mapping[str, Any]] | ApiError]:
                path = f"/api/v1/namespaces/{ns}/secrets"
                try:
                    text = client.get(path, selector, accept=METADATA_LIST)
                except ApiError as exc:
                    return ns, exc
                return ns, list(json.loads(text).get("items") or [])

            with ThreadPoolExecutor(_LISTS_AT_ONCE, thread_name_prefix="releases") as pool:
                for ns, answer in pool.map(one, wanted):
                    if isinstance(answer, ApiError):
                        if answer.status == 401:
                            raise answer from None
                        if answer.status == 403:
                            refused.add(ns)
                        else:
                            problems[ns] = answer.message
                    else:
                        metas.extend(answer)
        newest = latest_revisions(metas)
        found = self._summaries_of(client, newest)
        by_namespace: dict[str, list[Release]] = {
            ns: [] for ns in wanted if ns not in refused and ns not in problems
        }
        for (ns, _), release in sorted(found.items()):
            if release.status != "uninstalled" and ns in by_namespace:
                by_namespace[ns].append(release)
        return Releases(by_namespace, frozenset(refused), problems)

    def _summaries_of(
        self, client: Client, newest: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> dict[tuple[str, str], Release]:
        found: dict[tuple[str, str], Release] = {}
        missing: dict[str, dict[str, tuple[str, str]]] = {}  # namespace -> secret -> key
        with self._lock:
            for key, meta in newest.items():
                cache_key = (key[0], str(meta.get("name")), str(meta.get("resourceVersion")))
                hit = self._summaries.get(cache_key)
                if hit is not None:
                    self._summaries.move_to_end(cache_key)
                    found[key] = hit
                else:
                    missing.setdefault(key[0], {})[str(meta.get("name"))] = key

        def read(ns: str) -> list[tuple[tuple[str, str], Release, str]]:
            # One Secret is fetched alone; several at once by a list of the live states,
            # which leaves out the superseded revisions' data.
            wanted = missing[ns]
            if len(wanted) == 1:
                name = next(iter(wanted))
                secrets = [json.loads(client.get(f"/api/v1/namespaces/{ns}/secrets/{name}"))]
            else:
                states = ",".join(LIVE_STATES)
                selector = {"labelSelector": f"owner=helm,status in ({states})"}
                answer = client.get(f"/api/v1/namespaces/{ns}/secrets", selector)
                secrets = json.loads(answer).get("items") or []
            out = []
            for secret in secrets:
                meta = secret.get("metadata") or {}
                key = wanted.get(str(meta.get("name")))
                if key is None:
                    continue
                try:
                    release = _labelled(summary(_secret_release(secret), ns), *key)
                except ReleaseError as exc:
                    release = _unreadable(key, str(exc))
                out.append((key, release, str(meta.get("resourceVersion"))))
            return out

        with ThreadPoolExecutor(_LISTS_AT_ONCE, thread_name_prefix="decode") as pool:
            for batch in pool.map(read, sorted(missing)):
                with self._lock:
                    for key, release, version in batch:
                        found[key] = release
                        self._summaries[(key[0], str(newest[key].get("name")), version)] = release
                    _trim(self._summaries, self._cached)
        return found

    # --- one release ----------------------------------------------------------------------

    def history(self, user: Credentials, namespace: str, name: str) -> History:
        """Every revision of one release, oldest first, and the newest in full. Only
        revisions not seen before are fetched and decoded, the newest DECODED_REVISIONS at
        most (older ones are shown as their labels say)."""
        namespace, name = check_namespace(namespace), check_release_name(name)
        client = self.client(user)
        path = f"/api/v1/namespaces/{namespace}/secrets"
        selector = {"labelSelector": f"owner=helm,name={name}"}
        listed = json.loads(client.get(path, selector, accept=METADATA_LIST)).get("items") or []
        metas = sorted(
            (m for m in (item.get("metadata") or {} for item in listed) if m.get("name")),
            key=lambda m: _revision(m.get("labels") or {}),
        )
        if not metas:
            return History([], None)
        keys = [(namespace, str(m["name"]), str(m.get("resourceVersion"))) for m in metas]
        newest = keys[-1]
        with self._lock:
            known = {k: self._summaries[k] for k in keys if k in self._summaries}
            detail = self._details.get(newest)
        for key, meta in zip(keys[:-DECODED_REVISIONS], metas[:-DECODED_REVISIONS], strict=True):
            known.setdefault(key, _from_labels(meta, namespace, name))
        wanted = [k for k in keys if k not in known]
        if detail is None and newest not in wanted:
            wanted.append(newest)
        # Decoded one Secret at a time, outside the lock: nothing large is held for long.
        made, made_detail = self._decode(client, namespace, name, wanted, newest)
        with self._lock:
            self._summaries.update(made)
            if made_detail is not None:
                detail = self._details[newest] = made_detail
            _trim(self._summaries, self._cached)
            _trim(self._details, _DETAILS)
        known.update(made)
        releases = sorted(known.values(), key=lambda r: r.revision)
        return History(releases, detail)

    def _decode(
        self,
        client: Client,
        namespace: str,
        name: str,
        wanted: list[tuple[str, str, str]],
        newest: tuple[str, str, str],
    ) -> tuple[dict[tuple[str, str, str], Release], ReleaseDetail | None]:
        """The wanted revisions' summaries (an unreadable one says why, and is remembered
        as such), and the newest in full when it is wanted."""
        if not wanted:
            return {}, None
        path = f"/api/v1/namespaces/{namespace}/secrets"
        if len(wanted) == 1:
            items = [json.loads(client.get(f"{path}/{wanted[0][1]}"))]
        else:
            selector = {"labelSelector": f"owner=helm,name={name}"}
            items = json.loads(client.get(path, selector)).get("items") or []
        by_name = {key[1]: key for key in wanted}
        made: dict[tuple[str, str, str], Release] = {}
        detail = None
        for secret in items:
            meta = secret.get("metadata") or {}
            key = by_name.get(str(meta.get("name")))
            if key is None:
                continue
            key = (key[0], key[1], str(meta.get("resourceVersion")))
            what = f"Secret {namespace}/{key[1]}"
            full = key[1] == newest[1]
            try:
                if full:
                    stored = _secret_release(secret)
                    release = _labelled(summary(stored, namespace), namespace, name)
                    detail = _detail(stored, release, what)
                    del stored  # its decompressed buffer goes now, not with the page
                else:
                    brief = _secret_release(secret, _BriefRelease)
                    release = _labelled(summary(brief, namespace), namespace, name)
            except ReleaseError as exc:
                release = _unreadable((namespace, name), str(exc))
                release = dataclasses.replace(release, revision=_revision(meta.get("labels") or {}))
                if full:  # the page still shows the release, and says what is wrong
                    detail = ReleaseDetail(release, {}, "", "", str(exc))
            made[key] = release
        return made, detail


def _trim(cache: OrderedDict[Any, Any], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def _labelled(release: Release, namespace: str, name: str) -> Release:
    """A release named as its Secret is (labels and namespace), not as its content says:
    a Secret's content is anyone's who may write Secrets there."""
    return dataclasses.replace(release, name=name, namespace=namespace)


def _namespace(item: Mapping[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("namespace", ""))


def _from_labels(meta: Mapping[str, Any], namespace: str, name: str) -> Release:
    """An old revision as its Secret's labels say: its number and status."""
    labels = meta.get("labels") or {}
    status = str(labels.get("status", "")) or "unknown"
    return Release(name, namespace, _revision(labels), status, "", "", "", "", "not read")


def _unreadable(key: tuple[str, str], why: str) -> Release:
    return Release(key[1], key[0], 0, "unreadable", "", "", "", "", why)


def _detail(stored: StoredRelease, release: Release, what: str) -> ReleaseDetail:
    try:
        values: Mapping[str, Any] = values_of(stored, what)
        problem = ""
    except ReleaseError as exc:
        values, problem = {}, str(exc)
    manifest = stored.manifest
    if len(manifest) > MAX_MANIFEST_CHARS:
        manifest, problem = (
            "",
            f"{what}: its manifests are larger than {MAX_MANIFEST_CHARS >> 20} MiB",
        )
    notes = (stored.info.notes if stored.info else "")[:MAX_NOTES_CHARS]
    shown = yaml.dump(dict(values), Dumper=_DUMPER, sort_keys=False) if values else "{}\n"
    return ReleaseDetail(release, values, manifest, notes, problem, shown)
