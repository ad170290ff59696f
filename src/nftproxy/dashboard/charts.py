"""A chart's own files, read from its archive within limits and never unpacked to disk:
Chart.yaml, values.yaml, values.schema.json and README.md, which the catalog shows and the
deploy form is made from. The archive is checked against the digest its index gives, or,
from an OCI registry, against its manifest's layer digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from nftproxy.dashboard.catalog import (
    CHART_LAYER_TYPE,
    CatalogError,
    ChartVersion,
    DigestMismatch,
    OciLocation,
    Registry,
    RepoConfig,
    oci_location,
    version_tag,
)
from nftproxy.sources.manifests import ReadLimits, read_yaml_document

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_FILE_BYTES",
    "MAX_UNPACKED_BYTES",
    "ChartFiles",
    "ChartReadError",
    "fetch_archive",
    "read_archive",
]

MAX_ARCHIVE_BYTES = 16 << 20
MAX_UNPACKED_BYTES = 64 << 20  # a gzip bomb stops here, whatever the archive's size
MAX_FILE_BYTES = 4 << 20
MAX_MEMBERS = 10_000
_LIMITS = ReadLimits(max_file_bytes=MAX_FILE_BYTES, max_document_chars=MAX_FILE_BYTES)
_WANTED = ("Chart.yaml", "values.yaml", "values.schema.json", "README.md")


class ChartReadError(Exception):
    """A chart archive that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ChartFiles:
    name: str
    version: str
    values_yaml: str
    values: dict[str, Any]
    schema: dict[str, Any] | None
    readme: str


class _Bounded(io.RawIOBase):
    """A stream that fails once more than `limit` bytes have been read through it."""

    def __init__(self, inner: io.BufferedIOBase | gzip.GzipFile, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(min(len(buffer), self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise ChartReadError(f"unpacks to more than {MAX_UNPACKED_BYTES:,} bytes")
        buffer[: len(data)] = data
        return len(data)


def read_archive(data: bytes, what: str = "chart") -> ChartFiles:
    """The chart's files from a .tgz made by `helm package` (subcharts are not read)."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ChartReadError(f"{what}: larger than {MAX_ARCHIVE_BYTES:,} bytes")
    found: dict[str, bytes] = {}
    top: str | None = None
    try:
        stream = _Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), MAX_UNPACKED_BYTES)
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as archive:
            for count, member in enumerate(archive):
                if count >= MAX_MEMBERS:
                    raise ChartReadError(f"{what}: more than {MAX_MEMBERS:,} files")
                parts = member.name.split("/")
                if len(parts) != 2 or parts[1] not in _WANTED or not member.isfile():
                    continue  # templates, subcharts, links: not read here
                if top is None:
                    top = parts[0]
                if parts[0] != top or parts[1] in found:
                    continue
                if member.size > MAX_FILE_BYTES:
                    raise ChartReadError(
                        f"{what}: {member.name} is larger than {MAX_FILE_BYTES:,} bytes"
                    )
                content = archive.extractfile(member)
                if content is not None:
                    found[parts[1]] = content.read(MAX_FILE_BYTES + 1)
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ChartReadError(f"{what}: not a chart archive ({exc})") from None
    if "Chart.yaml" not in found:
        raise ChartReadError(f"{what}: no Chart.yaml")
    chart = _yaml_mapping(found["Chart.yaml"], f"{what}: Chart.yaml")
    values_yaml = found.get("values.yaml", b"").decode("utf-8", errors="replace")
    values = _yaml_mapping(found.get("values.yaml", b"{}"), f"{what}: values.yaml")
    schema = None
    if "values.schema.json" in found:
        schema = _json_mapping(found["values.schema.json"], f"{what}: values.schema.json")
    return ChartFiles(
        name=str(chart.get("name", "")),
        version=str(chart.get("version", "")),
        values_yaml=values_yaml,
        values=values,
        schema=schema,
        readme=found.get("README.md", b"").decode("utf-8", errors="replace"),
    )


def _yaml_mapping(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = read_yaml_document(data, _LIMITS)
    except ValueError as exc:
        raise ChartReadError(f"{what}: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ChartReadError(f"{what}: not a mapping")
    return doc


def _json_mapping(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ChartReadError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ChartReadError(f"{what}: not a JSON object")
    return doc


def fetch_archive(repo: RepoConfig, chart: ChartVersion, *, timeout: float = 30.0) -> bytes:
    """The archive of one chart version, from the first URL its index gives (relative ones
    are the repository's), checked against the index's digest when it has one; or from an
    OCI registry (see `_fetch_oci`)."""
    what = f"{repo.name}/{chart.name} {chart.version}"
    try:
        location = oci_location(repo.url)
        if location is not None:
            return _fetch_oci(location, chart, what, timeout)
    except CatalogError as exc:
        raise ChartReadError(str(exc)) from None
    if not chart.urls:
        raise ChartReadError(f"{what}: the index gives no URL")
    url = urllib.parse.urljoin(repo.url.rstrip("/") + "/", chart.urls[0])
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ChartReadError(f"{what}: {url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            data: bytes = answer.read(MAX_ARCHIVE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ChartReadError(f"{what}: {url}: {exc}") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ChartReadError(f"{what}: larger than {MAX_ARCHIVE_BYTES:,} bytes")
    if chart.digest and hashlib.sha256(data).hexdigest() != chart.digest.lower():
        raise ChartReadError(f"{what}: the archive does not match the index's digest")
    return data


def _fetch_oci(location: OciLocation, chart: ChartVersion, what: str, timeout: float) -> bytes:
    """The chart layer of a version's manifest, checked against the layer's digest. The
    manifest is the one the catalog described (by its digest) when it has one, else the
    version's tag's."""
    registry = Registry(what, location, timeout)
    repository = location.repository(chart.name)
    manifest, _ = registry.manifest(repository, chart.digest or version_tag(chart.version))
    layers = manifest.get("layers")
    found = [
        layer
        for layer in (layers if isinstance(layers, list) else [])
        if isinstance(layer, dict) and layer.get("mediaType") == CHART_LAYER_TYPE
    ]
    if len(found) != 1:
        raise ChartReadError(f"{what}: the manifest has {len(found)} chart layers, not one")
    size = found[0].get("size")
    if isinstance(size, int) and size > MAX_ARCHIVE_BYTES:
        raise ChartReadError(f"{what}: larger than {MAX_ARCHIVE_BYTES:,} bytes")
    try:
        return registry.blob(repository, str(found[0].get("digest", "")), MAX_ARCHIVE_BYTES)
    except DigestMismatch:
        raise ChartReadError(f"{what}: the archive does not match the manifest's digest") from None
