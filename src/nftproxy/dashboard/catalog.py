"""The chart catalog: classic Helm repositories the operator configures, their index.yaml
fetched over HTTP within limits, kept in memory and refreshed with validators (ETag,
Last-Modified) so that an unchanged index costs one small answer. No database."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nftproxy.sources.manifests import ReadLimits, read_yaml_document

__all__ = [
    "Catalog",
    "CatalogError",
    "ChartVersion",
    "Found",
    "RepoConfig",
    "RepoIndex",
    "configured",
    "parse_index",
    "version_key",
]

MAX_INDEX_BYTES = 64 << 20
INDEX_LIMITS = ReadLimits(max_file_bytes=MAX_INDEX_BYTES, max_document_chars=MAX_INDEX_BYTES)
_SEMVER = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


class CatalogError(Exception):
    """A repository that cannot be read; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class RepoConfig:
    name: str
    url: str  # the repository's base URL; its index is <url>/index.yaml


@dataclass(frozen=True, slots=True)
class ChartVersion:
    name: str
    version: str
    app_version: str = ""
    description: str = ""
    created: str = ""
    urls: tuple[str, ...] = ()
    digest: str = ""
    deprecated: bool = False


@dataclass(frozen=True, slots=True)
class RepoIndex:
    repo: RepoConfig
    # chart name -> its versions, newest first
    charts: Mapping[str, tuple[ChartVersion, ...]]


@dataclass(frozen=True, slots=True)
class Found:
    repo: str
    chart: ChartVersion  # the newest version


def version_key(version: str) -> tuple[int, Any]:
    """Sorts semantic versions (a release after its pre-releases); others after all."""
    m = _SEMVER.fullmatch(version.strip())
    if m is None:
        return (0, version)
    major, minor, patch, pre = m.groups()
    numbers = (int(major), int(minor or 0), int(patch or 0))
    if pre is None:
        return (1, (numbers, 1, ()))
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (1, (numbers, 0, parts))


def _text(value: object, limit: int = 10_000) -> str:
    return str(value)[:limit] if isinstance(value, str | int | float) else ""


def parse_index(repo: RepoConfig, doc: object) -> RepoIndex:
    """An index.yaml document: malformed entries are left out, the rest kept."""
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise CatalogError(f"repository {repo.name}: index.yaml has no 'entries' mapping")
    charts: dict[str, tuple[ChartVersion, ...]] = {}
    for name, versions in entries.items():
        if not isinstance(name, str) or not isinstance(versions, list):
            continue
        found = []
        for v in versions:
            if not isinstance(v, dict) or not isinstance(v.get("version"), str | int | float):
                continue
            listed = v.get("urls")
            urls: list[Any] = listed if isinstance(listed, list) else []
            found.append(
                ChartVersion(
                    name=name,
                    version=_text(v["version"], 100),
                    app_version=_text(v.get("appVersion", ""), 100),
                    description=_text(v.get("description", ""), 1_000),
                    created=_text(v.get("created", ""), 100),
                    urls=tuple(_text(u, 2_000) for u in urls if isinstance(u, str)),
                    digest=_text(v.get("digest", ""), 200),
                    deprecated=v.get("deprecated") is True,
                )
            )
        if found:
            found.sort(key=lambda c: version_key(c.version), reverse=True)
            charts[name] = tuple(found)
    return RepoIndex(repo, charts)


@dataclass(slots=True)
class _Cached:
    index: RepoIndex | None = None
    etag: str | None = None
    modified: str | None = None
    error: str | None = None


@dataclass
class Catalog:
    """Every configured repository's index, fetched on `refresh`."""

    repos: tuple[RepoConfig, ...]
    timeout: float = 30.0
    _cache: dict[str, _Cached] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def refresh(self) -> dict[str, str]:
        """Fetch each index again (an unchanged one answers 304); the repositories that
        failed, with why. A failed repository keeps its last good index."""
        errors = {}
        for repo in self.repos:
            with self._lock:
                cached = self._cache.setdefault(repo.name, _Cached())
            try:
                self._fetch(repo, cached)
                cached.error = None
            except CatalogError as exc:
                cached.error = str(exc)
                errors[repo.name] = str(exc)
        return errors

    def _fetch(self, repo: RepoConfig, cached: _Cached) -> None:
        url = repo.url.rstrip("/") + "/index.yaml"
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CatalogError(f"repository {repo.name}: {repo.url!r} is not an http(s) URL")
        request = urllib.request.Request(url, headers={"Accept": "application/yaml, */*"})
        if cached.index is not None and cached.etag:
            request.add_header("If-None-Match", cached.etag)
        if cached.index is not None and cached.modified:
            request.add_header("If-Modified-Since", cached.modified)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                data = answer.read(MAX_INDEX_BYTES + 1)
                etag, modified = answer.headers.get("ETag"), answer.headers.get("Last-Modified")
        except urllib.error.HTTPError as exc:
            if exc.code == 304 and cached.index is not None:
                return
            raise CatalogError(
                f"repository {repo.name}: {url}: HTTP {exc.code} {exc.reason}"
            ) from None
        except (OSError, ValueError) as exc:
            raise CatalogError(f"repository {repo.name}: {url}: {exc}") from None
        if len(data) > MAX_INDEX_BYTES:
            raise CatalogError(
                f"repository {repo.name}: index.yaml is larger than {MAX_INDEX_BYTES:,} bytes"
            )
        try:
            doc = read_yaml_document(data, INDEX_LIMITS)
        except ValueError as exc:
            raise CatalogError(f"repository {repo.name}: index.yaml: {exc}") from None
        cached.index = parse_index(repo, doc)
        cached.etag, cached.modified = etag, modified

    def index(self, repo: str) -> RepoIndex | None:
        cached = self._cache.get(repo)
        return cached.index if cached is not None else None

    def search(self, text: str = "") -> list[Found]:
        """Charts whose name or description holds every word of `text`, newest versions."""
        words = text.lower().split()
        found = []
        for repo in self.repos:
            index = self.index(repo.name)
            for name, versions in sorted(index.charts.items()) if index else ():
                newest = versions[0]
                haystack = f"{name} {newest.description}".lower()
                if all(w in haystack for w in words):
                    found.append(Found(repo.name, newest))
        return found

    def versions(self, repo: str, chart: str) -> tuple[ChartVersion, ...]:
        index = self.index(repo)
        return index.charts.get(chart, ()) if index is not None else ()

    def newer(self, repo: str, chart: str, version: str) -> ChartVersion | None:
        """The newest version of `chart` if it is newer than `version` (an upgrade badge)."""
        versions = self.versions(repo, chart)
        if versions and version_key(versions[0].version) > version_key(version):
            return versions[0]
        return None


def configured(repos: Iterable[Mapping[str, str]]) -> tuple[RepoConfig, ...]:
    """Repositories as the operator lists them ({name, url}); names must be unique."""
    out: list[RepoConfig] = []
    for i, entry in enumerate(repos):
        name, url = entry.get("name"), entry.get("url")
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            raise CatalogError(f"repositories[{i}]: needs a name and a url")
        if any(r.name == name for r in out):
            raise CatalogError(f"repositories[{i}]: the name {name!r} is used twice")
        out.append(RepoConfig(name, url))
    return tuple(out)
