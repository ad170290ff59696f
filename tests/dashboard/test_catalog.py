"""The chart catalog (nftproxy.dashboard.catalog) against chart repositories on loopback,
packaged and indexed by helm itself: search, versions, upgrade badges, refresh by
validators, and repositories that fail without harming the others."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.dashboard.catalog import Catalog, RepoConfig, version_key
from nftproxy.dashboard.helm import Helm
from nftproxy.lab.charts import HttpChartRepo, write_chart


@pytest.fixture
def repos(packager: Helm, tmp_path: Path) -> Iterator[tuple[HttpChartRepo, HttpChartRepo]]:
    src = tmp_path / "src"
    with (
        HttpChartRepo(packager, tmp_path / "main") as main,
        HttpChartRepo(packager, tmp_path / "extra") as extra,
    ):
        main.publish(
            [
                write_chart(src, "hello", "0.1.0"),
                write_chart(src, "hello", "0.2.0"),
                write_chart(src, "web", "1.0.0", app_version="2.4"),
            ]
        )
        extra.publish([write_chart(src / "x", "hello", "9.0.0-rc.1")])
        yield main, extra


def test_versions_sort_as_semantic_versions_newest_first() -> None:
    given = [
        "0.9.2",
        "1.0.0-beta",
        "banana",
        "v2.0",
        "1.0.0",
        "0.9.10",
        "1.0.0-rc.1",
        "1.0.0-beta.2",
    ]
    ordered = sorted(given, key=version_key, reverse=True)
    assert ordered == [
        "v2.0",
        "1.0.0",
        "1.0.0-rc.1",
        "1.0.0-beta.2",
        "1.0.0-beta",
        "0.9.10",
        "0.9.2",
        "banana",
    ]


def test_search_versions_and_upgrade_badges_across_two_repositories(
    repos: tuple[HttpChartRepo, HttpChartRepo],
) -> None:
    main, extra = repos
    catalog = Catalog((RepoConfig("main", main.url), RepoConfig("extra", extra.url)))
    assert catalog.refresh() == {}
    everything = [(f.repo, f.chart.name, f.chart.version) for f in catalog.search()]
    assert everything == [  # by name, then by repository as configured
        ("main", "hello", "0.2.0"),
        ("extra", "hello", "9.0.0-rc.1"),
        ("main", "web", "1.0.0"),
    ]
    assert [(f.repo, f.chart.name) for f in catalog.search("WEB tests")] == [("main", "web")]
    assert catalog.search("nothing-like-this") == []
    assert [v.version for v in catalog.versions("main", "hello")] == ["0.2.0", "0.1.0"]
    web = catalog.versions("main", "web")[0]
    assert web.app_version == "2.4" and web.urls and web.digest
    newer = catalog.newer("main", "hello", "0.1.0")
    assert newer is not None and newer.version == "0.2.0"
    assert catalog.newer("main", "hello", "0.2.0") is None


def test_an_unchanged_index_is_not_read_again_and_a_changed_one_is(
    repos: tuple[HttpChartRepo, HttpChartRepo], tmp_path: Path
) -> None:
    main, _ = repos
    catalog = Catalog((RepoConfig("main", main.url),))
    catalog.refresh()
    before = catalog.index("main")
    catalog.refresh()
    assert catalog.index("main") is before  # 304: the same object, nothing parsed
    main.publish([write_chart(tmp_path / "new", "hello", "0.3.0")])
    later = time.time() + 5  # validators have one-second resolution
    os.utime(main.directory / "index.yaml", (later, later))
    catalog.refresh()
    assert [v.version for v in catalog.versions("main", "hello")] == ["0.3.0", "0.2.0", "0.1.0"]


def test_a_broken_or_unreachable_repository_is_named_and_harms_no_other(
    repos: tuple[HttpChartRepo, HttpChartRepo],
) -> None:
    main, extra = repos
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    catalog = Catalog(
        (RepoConfig("main", main.url), RepoConfig("extra", extra.url), RepoConfig("gone", closed))
    )
    errors = catalog.refresh()
    assert set(errors) == {"gone"} and "repository gone" in errors["gone"]
    (extra.directory / "index.yaml").write_text("entries: [unclosed\n")
    later = time.time() + 5
    os.utime(extra.directory / "index.yaml", (later, later))
    errors = catalog.refresh()
    assert "repository extra: index.yaml: invalid YAML" in errors["extra"]
    # The last good index stays; the healthy repository is untouched.
    assert [f.repo for f in catalog.search("hello")] == ["main", "extra"]
    # Aliases of aliases: a few hundred bytes that would expand to 10**8 items.
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        levels.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    (extra.directory / "index.yaml").write_text("\n".join(levels) + "\n")
    os.utime(extra.directory / "index.yaml", (later + 5, later + 5))
    assert "aliases would add more than" in catalog.refresh()["extra"]
