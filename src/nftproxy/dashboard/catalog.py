"""The chart catalog: the chart repositories the operator configures, kept in memory and
refreshed within limits. No database. Two kinds of repository:

- a classic Helm repository (`http(s)://...`): its index.yaml, refreshed with validators
  (ETag, Last-Modified) so that an unchanged index costs one small answer;
- an OCI registry (`oci://HOST[:PORT]/PATH`, HTTPS; `oci+http://...` for plain HTTP, which
  the operator asks for explicitly): the charts are the repositories directly under PATH
  that the registry's `/v2/_catalog` lists, or, for a registry that does not list its
  catalog to everyone (most public ones), the charts named after `#`:
  `oci://registry.example/charts#nginx,redis`. Versions are a chart's tags (helm writes
  a version's `+` as `_` in a tag); the newest three versions are described from their
  manifests' config blob (Chart.yaml as JSON), cached by digest. Anonymous access, with
  the bearer-token challenge registries answer anonymous clients with."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from nftproxy.sources.manifests import ReadLimits, read_yaml_document

__all__ = [
    "CHART_CONFIG_TYPE",
    "CHART_LAYER_TYPE",
    "OCI_MANIFEST_TYPE",
    "Catalog",
    "CatalogError",
    "ChartVersion",
    "DigestMismatch",
    "Found",
    "OciLocation",
    "Registry",
    "RepoConfig",
    "RepoIndex",
    "configured",
    "oci_location",
    "parse_index",
    "tag_version",
    "version_key",
    "version_tag",
]

MAX_INDEX_BYTES = 64 << 20
INDEX_LIMITS = ReadLimits(max_file_bytes=MAX_INDEX_BYTES, max_document_chars=MAX_INDEX_BYTES)
_SEMVER = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")

# What helm pushes: an OCI image manifest whose config is Chart.yaml as JSON and whose one
# layer is the chart's .tgz.
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CHART_CONFIG_TYPE = "application/vnd.cncf.helm.config.v1+json"
CHART_LAYER_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
# Bounds on what one refresh asks a registry and reads from it.
MAX_JSON_BYTES = 4 << 20  # a catalog or tags page, a manifest, a token answer
MAX_CONFIG_BYTES = 1 << 20  # a chart's Chart.yaml as JSON
PAGE_SIZE = 1000
MAX_PAGES = 20  # of a catalog or a tag list
MAX_REPOSITORIES = 20_000  # in a registry's catalog, charts or not
MAX_OCI_CHARTS = 200
MAX_TAGS = 2000
# The newest versions of each chart whose manifest is read at every refresh (a tag can be
# pushed again), and whose config blob is read once: the catalog shows the newest's
# metadata, the deploy page the picked version's. So a refresh asks at most
# MAX_OCI_CHARTS * (1 + 2 * DESCRIBED_VERSIONS) + a catalog's pages, all in bounds below.
DESCRIBED_VERSIONS = 3
MAX_REQUESTS = 2000  # per repository and refresh
MAX_DESCRIPTIONS = 10_000  # cached by config digest, per repository
# A registry's repository path component (the distribution spec's grammar), and a host.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_OCI_URL = re.compile(
    rf"(oci|oci\+http)://([A-Za-z0-9](?:[A-Za-z0-9.-]{{0,252}}[A-Za-z0-9])?(?::[0-9]{{1,5}})?)"
    rf"((?:/{_COMPONENT})*)/?(?:#({_COMPONENT}(?:,{_COMPONENT})*))?"
)
_LINK_NEXT = re.compile(r'<([^>]{1,4000})>\s*;\s*rel="?next"?')
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]{0,2000})"')


class CatalogError(Exception):
    """A repository that cannot be read; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class OciLocation:
    """Where an OCI repository's charts are: `registry` (HOST[:PORT]), the repository path
    they sit directly under (`path`, "" for the top), and the charts the operator named."""

    registry: str
    path: str
    plain_http: bool = False
    charts: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.registry}"

    def repository(self, chart: str) -> str:
        """The registry's name for a chart's repository."""
        return f"{self.path}/{chart}" if self.path else chart

    def reference(self, chart: str) -> str:
        """The chart as helm names it (helm is told about plain HTTP by a flag)."""
        return f"oci://{self.registry}/{self.repository(chart)}"


def oci_location(url: str) -> OciLocation | None:
    """The OCI location a repository URL names; None for an http(s) repository.

    `oci://HOST[:PORT]/PATH` (HTTPS) or `oci+http://HOST[:PORT]/PATH` (plain HTTP), with
    the charts listed after `#` (`#nginx,redis`) when the registry's catalog is not to be
    asked. Names follow the registry's grammar: lowercase, digits, and `.`, `_`, `-`."""
    if not url.lower().startswith("oci"):
        return None
    m = _OCI_URL.fullmatch(url)
    if m is None:
        raise CatalogError(
            f"{url[:200]!r} is not oci://HOST[:PORT]/PATH[#CHART,...] (lowercase paths)"
        )
    scheme, registry, path, charts = m.groups()
    named = tuple(dict.fromkeys(charts.split(","))) if charts else ()
    return OciLocation(registry, path.strip("/"), scheme == "oci+http", named)


@dataclass(frozen=True, slots=True)
class RepoConfig:
    name: str
    # A classic repository's base URL (its index is <url>/index.yaml), or an OCI one
    # (oci:// or oci+http://, see `oci_location`).
    url: str

    @property
    def oci(self) -> OciLocation | None:
        return oci_location(self.url)

    @property
    def plain_http(self) -> bool:
        """An OCI registry reached over plain HTTP (the operator's explicit oci+http://)."""
        location = self.oci
        return location is not None and location.plain_http


@dataclass(frozen=True, slots=True)
class ChartVersion:
    name: str
    version: str
    app_version: str = ""
    description: str = ""
    created: str = ""
    # A classic repository's archive URLs and the archive's sha256 (hex); an OCI chart's
    # reference (oci://.../NAME:TAG) and its manifest's digest (sha256:...) when described.
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


def version_tag(version: str) -> str:
    """The OCI tag helm pushes a chart version as: tags cannot hold `+`, so helm writes `_`."""
    return version.replace("+", "_")


def tag_version(tag: str) -> str:
    return tag.replace("_", "+")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CatalogError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CatalogError(f"{what}: not a JSON object")
    return doc


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|sha256:[0-9a-f]{64}")


class DigestMismatch(CatalogError):
    """A registry answered with other content than the digest it was asked by names."""


class _Refused(CatalogError):
    """The registry answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Registries redirect blob downloads to storage elsewhere: never from HTTPS to plain
    HTTP. (The token is an unredirected header: it goes with no redirect.)"""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise urllib.error.HTTPError(
                newurl, code, "a redirect from HTTPS to plain HTTP", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


@dataclass
class Registry:
    """An OCI registry's distribution API, read anonymously within bounds: every answer
    is size-limited, every listing page-limited, and all requests counted. A registry that
    answers 401 with a bearer challenge gets asked for an anonymous token, kept per scope
    for the object's life. Errors are CatalogError, starting with `what`."""

    what: str
    location: OciLocation
    timeout: float = 30.0
    max_requests: int = MAX_REQUESTS
    page_size: int = PAGE_SIZE  # entries asked for per page of a listing
    requests: int = field(default=0, init=False)
    _tokens: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def charts_under(self, path: str) -> list[str]:
        """The repositories directly under `path` (their last component), from _catalog."""
        prefix = f"{path}/" if path else ""
        names = self._paged("/v2/_catalog", "repositories", "registry:catalog:*", MAX_REPOSITORIES)
        found = (n[len(prefix) :] for n in names if n.startswith(prefix))
        charts = sorted({n for n in found if re.fullmatch(_COMPONENT, n)})
        if len(charts) > MAX_OCI_CHARTS:
            raise CatalogError(f"{self.what}: more than {MAX_OCI_CHARTS:,} charts under {path!r}")
        return charts

    def tags(self, repository: str) -> list[str]:
        self._check(repository)
        scope = f"repository:{repository}:pull"
        return self._paged(f"/v2/{repository}/tags/list", "tags", scope, MAX_TAGS)

    def manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        """A manifest by tag or digest (an image index or another kind when that is what
        the registry holds there), and its digest (checked when asked by
        digest: a registry cannot answer with another manifest than the one named)."""
        self._check(repository, reference)
        data, _ = self.get(
            f"/v2/{repository}/manifests/{reference}",
            accept=OCI_MANIFEST_TYPE,
            limit=MAX_JSON_BYTES,
            scope=f"repository:{repository}:pull",
        )
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(
                f"{self.what}: {repository}@{reference}: the manifest does not match its digest"
            )
        return _json_object(data, f"{self.what}: {repository}:{reference}"), digest

    def blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A blob, at most `limit` bytes, checked against its digest."""
        self._check(repository)
        if not _DIGEST.fullmatch(digest):
            raise CatalogError(f"{self.what}: {repository}: {digest[:80]!r} is not a sha256 digest")
        data, _ = self.get(
            f"/v2/{repository}/blobs/{digest}",
            accept="application/octet-stream",
            limit=limit,
            scope=f"repository:{repository}:pull",
        )
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(
                f"{self.what}: {repository}: the blob does not match its digest {digest}"
            )
        return data

    def get(self, path: str, *, accept: str, limit: int, scope: str) -> tuple[bytes, Message]:
        """GET `path` on the registry; once more with a token when it challenges for one."""
        url = self.location.base + path
        token = self._tokens.get(scope)
        try:
            return self._read(url, accept, limit, token)
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "")
            if exc.code != 401 or token is not None:
                raise self._refused(url, exc) from None
        token = self._tokens[scope] = self._token(challenge, scope)
        try:
            return self._read(url, accept, limit, token)
        except urllib.error.HTTPError as exc:
            raise self._refused(url, exc) from None

    def _check(self, repository: str, reference: str = "latest") -> None:
        """Names that go into a URL path: the registry's grammar, nothing else."""
        if not _REPOSITORY.fullmatch(repository) or not _REFERENCE.fullmatch(reference):
            raise CatalogError(f"{self.what}: {repository[:100]!r}:{reference[:100]!r} is no name")

    def _refused(self, url: str, exc: urllib.error.HTTPError) -> _Refused:
        return _Refused(f"{self.what}: {url}: HTTP {exc.code} {exc.reason}", exc.code)

    def _read(self, url: str, accept: str, limit: int, token: str | None) -> tuple[bytes, Message]:
        """One request, its answer read to at most `limit` bytes (HTTPError passes)."""
        self.requests += 1
        if self.requests > self.max_requests:
            raise CatalogError(f"{self.what}: more than {self.max_requests:,} requests at once")
        request = urllib.request.Request(url, headers={"Accept": accept})
        if token is not None:
            request.add_unredirected_header("Authorization", f"Bearer {token}")
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                data: bytes = answer.read(limit + 1)
                headers: Message = answer.headers
        except urllib.error.HTTPError:
            raise  # an OSError too, but an answer: the caller decides what its status means
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{self.what}: {url}: {exc}") from None
        if len(data) > limit:
            raise CatalogError(f"{self.what}: {url}: larger than {limit:,} bytes")
        return data, headers

    def _token(self, challenge: str, scope: str) -> str:
        """An anonymous token from the realm a `Bearer` challenge names."""
        kind, _, rest = challenge.strip().partition(" ")
        if kind.lower() != "bearer":
            raise _Refused(
                f"{self.what}: the registry wants credentials ({kind or 'HTTP 401'}); "
                "only anonymous access is supported",
                401,
            )
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.get("realm", "")
        scheme = urllib.parse.urlsplit(realm).scheme
        if scheme != "https" and not (scheme == "http" and self.location.plain_http):
            raise CatalogError(f"{self.what}: the token realm {realm[:200]!r} is not HTTPS")
        query = {"scope": params.get("scope") or scope}
        if "service" in params:
            query["service"] = params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        try:
            data, _ = self._read(url, "application/json", MAX_JSON_BYTES, None)
        except urllib.error.HTTPError as exc:
            raise self._refused(url, exc) from None
        answer = _json_object(data, f"{self.what}: the token realm's answer")
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not re.fullmatch(r"[!-~]{1,16384}", token):
            raise CatalogError(f"{self.what}: the token realm gave no usable token")
        return token

    def _paged(self, path: str, key: str, scope: str, most: int) -> list[str]:
        """A listing followed page by page: by the Link header, or by `last` when a full
        page comes without one; at most MAX_PAGES pages and `most` entries."""
        found: list[str] = []
        query, last = f"n={self.page_size}", ""
        for _ in range(MAX_PAGES):
            data, headers = self.get(
                f"{path}?{query}", accept="application/json", limit=MAX_JSON_BYTES, scope=scope
            )
            items = _json_object(data, f"{self.what}: {path}").get(key) or []
            page = [i for i in items if isinstance(i, str)] if isinstance(items, list) else []
            found += page
            if len(found) > most:
                raise CatalogError(f"{self.what}: {path}: more than {most:,} entries")
            following = self._next(headers.get("Link", ""), path)
            # A full page without a link may not be the last; one that repeats is.
            if following is None and len(page) >= self.page_size and page[-1] != last:
                following = urllib.parse.urlencode({"n": self.page_size, "last": page[-1]})
            if following is None:
                return found
            query, last = following, page[-1] if page else last
        raise CatalogError(f"{self.what}: {path}: more than {MAX_PAGES} pages")

    def _next(self, link: str, path: str) -> str | None:
        """The next page's query from a Link header, if it points at the same listing."""
        m = _LINK_NEXT.search(link)
        if m is None:
            return None
        target = urllib.parse.urlsplit(urllib.parse.urljoin(self.location.base + path, m.group(1)))
        base = urllib.parse.urlsplit(self.location.base)
        if (target.scheme, target.netloc, target.path) != (base.scheme, base.netloc, path):
            raise CatalogError(
                f"{self.what}: {path}: the next page is elsewhere ({m.group(1)[:200]!r})"
            )
        return str(target.query)


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


@dataclass(frozen=True, slots=True)
class _Described:
    """What a chart version's config blob (Chart.yaml as JSON) tells the catalog."""

    app_version: str
    description: str
    deprecated: bool


@dataclass(slots=True)
class _Cached:
    index: RepoIndex | None = None
    etag: str | None = None
    modified: str | None = None
    error: str | None = None
    # An OCI repository's chart versions by config digest: content never changes.
    described: dict[str, _Described] = field(default_factory=dict)


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
        location = oci_location(repo.url)
        if location is None:
            self._fetch_index(repo, cached)
            return
        registry = Registry(f"repository {repo.name}", location, self.timeout)
        if location.charts:
            names = list(location.charts)
        else:
            try:
                names = registry.charts_under(location.path)
            except _Refused as exc:
                if exc.status not in (401, 403, 404):
                    raise
                raise CatalogError(
                    f"repository {repo.name}: the registry does not list its catalog "
                    f"(HTTP {exc.status}): name the charts, as {repo.url}#CHART,CHART"
                ) from None
        charts = {}
        for name in names:
            versions = self._oci_versions(
                registry, location, name, cached, named=bool(location.charts)
            )
            if versions:
                charts[name] = versions
        if cached.index is None or cached.index.charts != charts:
            cached.index = RepoIndex(repo, charts)

    def _oci_versions(
        self,
        registry: Registry,
        location: OciLocation,
        name: str,
        cached: _Cached,
        *,
        named: bool,
    ) -> tuple[ChartVersion, ...]:
        """A chart's versions from its tags, newest first, the newest few described; none
        when its newest version is not a Helm chart (an image, say, in the same place)."""
        repository = location.repository(name)
        try:
            tags = registry.tags(repository)
        except _Refused as exc:
            if exc.status != 404:
                raise
            if named:
                raise CatalogError(
                    f"{registry.what}: no chart {name} at {location.reference(name)}"
                ) from None
            return ()  # gone since the catalog listed it
        versions = sorted(
            {tag_version(t) for t in tags if _SEMVER.fullmatch(tag_version(t))},
            key=version_key,
            reverse=True,
        )
        found = []
        for i, version in enumerate(versions):
            reference = (f"{location.reference(name)}:{version_tag(version)}",)
            if i >= DESCRIBED_VERSIONS:
                found.append(ChartVersion(name, version, urls=reference))
                continue
            described = self._describe(registry, repository, version, cached)
            if described is None and i == 0:
                return ()
            if described is not None:
                about, digest, created = described
                found.append(
                    ChartVersion(
                        name,
                        version,
                        app_version=about.app_version,
                        description=about.description,
                        created=created,
                        urls=reference,
                        digest=digest,
                        deprecated=about.deprecated,
                    )
                )
        return tuple(found)

    def _describe(
        self, registry: Registry, repository: str, version: str, cached: _Cached
    ) -> tuple[_Described, str, str] | None:
        """A version's metadata, its manifest's digest and its creation time; None when the
        tag is not a Helm chart. The config blob is read once per digest."""
        manifest, digest = registry.manifest(repository, version_tag(version))
        config = manifest.get("config")
        if (
            manifest.get("mediaType", OCI_MANIFEST_TYPE) != OCI_MANIFEST_TYPE
            or not isinstance(config, dict)
            or config.get("mediaType") != CHART_CONFIG_TYPE
        ):
            return None
        config_digest = str(config.get("digest", ""))
        about = cached.described.get(config_digest)
        if about is None:
            data = registry.blob(repository, config_digest, MAX_CONFIG_BYTES)
            chart = _json_object(data, f"{registry.what}: {repository}:{version} config")
            about = _Described(
                app_version=_text(chart.get("appVersion", ""), 100),
                description=_text(chart.get("description", ""), 1_000),
                deprecated=chart.get("deprecated") is True,
            )
            if len(cached.described) >= MAX_DESCRIPTIONS:
                cached.described.pop(next(iter(cached.described)))
            cached.described[config_digest] = about
        annotations = manifest.get("annotations")
        created = (
            annotations.get("org.opencontainers.image.created", "")
            if isinstance(annotations, dict)
            else ""
        )
        return about, digest, _text(created, 100)

    def _fetch_index(self, repo: RepoConfig, cached: _Cached) -> None:
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
        """Charts whose name or description holds every word of `text`, newest versions,
        by name (then by repository, in the order they are configured)."""
        words = text.lower().split()
        found = []
        for repo in self.repos:
            index = self.index(repo.name)
            for name, versions in sorted(index.charts.items()) if index else ():
                newest = versions[0]
                haystack = f"{name} {newest.description}".lower()
                if all(w in haystack for w in words):
                    found.append(Found(repo.name, newest))
        return sorted(found, key=lambda f: f.chart.name)  # stable: repositories keep order

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
    """Repositories as the operator lists them ({name, url}); names must be unique, OCI
    URLs well-formed (see `oci_location`)."""
    out: list[RepoConfig] = []
    for i, entry in enumerate(repos):
        name, url = entry.get("name"), entry.get("url")
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            raise CatalogError(f"repositories[{i}]: needs a name and a url")
        if any(r.name == name for r in out):
            raise CatalogError(f"repositories[{i}]: the name {name!r} is used twice")
        try:
            oci_location(url)
        except CatalogError as exc:
            raise CatalogError(f"repositories[{i}]: {exc}") from None
        out.append(RepoConfig(name, url))
    return tuple(out)
