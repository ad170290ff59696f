"""A chart's files from its archive (nftproxy.dashboard.charts): archives packaged by helm
itself and fetched from a loopback repository, checked against the index's digest; and
archives made to hurt (a gzip bomb, too many files, links, no Chart.yaml)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator

import pytest

from nftproxy.dashboard.catalog import Catalog, RepoConfig
from nftproxy.dashboard.charts import MAX_FILE_BYTES, ChartReadError, fetch_archive, read_archive
from nftproxy.dashboard.helm import Helm
from nftproxy.lab.charts import HttpChartRepo, write_chart

SCHEMA = {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 1}}}


@pytest.fixture(scope="module")
def repo(packager: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpChartRepo]:
    src = tmp_path_factory.mktemp("charts")
    chart = write_chart(src, "hello", "0.1.0", values="replicas: 2\n", schema=json.dumps(SCHEMA))
    (chart / "README.md").write_text("# hello\n\nSays hello.\n")
    with HttpChartRepo(packager, tmp_path_factory.mktemp("repo")) as served:
        served.publish([chart])
        yield served


def tgz(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return raw.getvalue()


def test_a_chart_packaged_by_helm_is_fetched_checked_and_read(repo: HttpChartRepo) -> None:
    catalog = Catalog((RepoConfig("main", repo.url),))
    assert catalog.refresh() == {}
    [version] = catalog.versions("main", "hello")
    files = read_archive(fetch_archive(RepoConfig("main", repo.url), version))
    assert (files.name, files.version) == ("hello", "0.1.0")
    assert files.values == {"replicas": 2} and files.values_yaml == "replicas: 2\n"
    assert files.schema == SCHEMA and files.readme.startswith("# hello")


def test_an_archive_that_does_not_match_its_digest_is_refused(repo: HttpChartRepo) -> None:
    catalog = Catalog((RepoConfig("main", repo.url),))
    catalog.refresh()
    [version] = catalog.versions("main", "hello")
    archive = repo.directory / "hello-0.1.0.tgz"
    archive.write_bytes(archive.read_bytes() + b"\0")  # tampered after indexing
    with pytest.raises(ChartReadError, match="does not match the index's digest"):
        fetch_archive(RepoConfig("main", repo.url), version)


def test_a_gzip_bomb_stops_at_the_unpacked_limit() -> None:
    # 100 MB of zeros as one file compresses to about 100 KB.
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w") as archive:
        info = tarfile.TarInfo("c/templates/zeros.yaml")
        info.size = 100 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = gzip.compress(big.getvalue(), compresslevel=9)
    assert len(bomb) < 1 << 20
    with pytest.raises(ChartReadError, match="unpacks to more than"):
        read_archive(bomb)


def test_oversized_files_links_and_missing_charts_are_refused_or_skipped() -> None:
    with pytest.raises(ChartReadError, match=r"values\.yaml is larger than"):
        read_archive(
            tgz({"c/Chart.yaml": b"name: c\n", "c/values.yaml": b"#" * (MAX_FILE_BYTES + 1)})
        )
    # A link named values.yaml is not followed; only regular files are read.
    files = read_archive(
        tgz({"c/Chart.yaml": b"name: c\nversion: 1.0.0\n"}, links={"c/values.yaml": "/etc/passwd"})
    )
    assert files.values == {} and files.name == "c"
    with pytest.raises(ChartReadError, match=r"no Chart\.yaml"):
        read_archive(tgz({"c/values.yaml": b"a: 1\n"}))
    with pytest.raises(ChartReadError, match="not a chart archive"):
        read_archive(b"not gzip at all")
    with pytest.raises(ChartReadError, match=r"values\.schema\.json: not JSON"):
        read_archive(tgz({"c/Chart.yaml": b"name: c\n", "c/values.schema.json": b"[" * 100_000}))
    # Subcharts' files are not the chart's.
    files = read_archive(tgz({"c/Chart.yaml": b"name: c\n", "c/charts/sub/values.yaml": b"x: 1\n"}))
    assert files.values == {}
