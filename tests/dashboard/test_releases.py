"""Reading helm's release Secrets (nftproxy.dashboard.releases): the pure part here; the
reader against the real apiserver and real helm is in test_live.py."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from nftproxy.dashboard.releases import (
    MAX_RELEASE_BYTES,
    ReleaseError,
    decode_release,
    latest_revisions,
    summary,
    timestamp_text,
    values_of,
)


def stored(release: dict[str, Any]) -> bytes:
    """A release as helm writes it into its Secret: base64 of gzipped JSON."""
    return base64.b64encode(gzip.compress(json.dumps(release).encode()))


RELEASE = {
    "name": "web",
    "namespace": "apps",
    "version": 3,
    "info": {
        "status": "deployed",
        "last_deployed": "2026-12-07T03:55:12.123456789+01:00",
        "description": "Upgrade complete",
        "notes": "hello",
    },
    "chart": {"metadata": {"name": "nginx", "version": "1.2.3", "appVersion": "1.27"}},
    "config": {"replicas": 2},
    "manifest": "---\nkind: ConfigMap\n",
}


def test_a_stored_release_reads_back_as_helm_wrote_it() -> None:
    plain = base64.b64encode(json.dumps(RELEASE).encode())  # old helm 2-style: no gzip
    assert summary(decode_release(plain), "apps") == summary(decode_release(stored(RELEASE)), "a")
    release = decode_release(stored(RELEASE))
    assert values_of(release) == {"replicas": 2}
    assert release.manifest == RELEASE["manifest"]
    got = summary(release, "apps")
    assert (got.name, got.revision, got.status, got.chart_label, got.app_version) == (
        "web",
        3,
        "deployed",
        "nginx-1.2.3",
        "1.27",
    )
    assert got.updated_text == "2026-12-07 02:55:12 UTC"  # any offset, shown in UTC


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not base64!", "not base64"),
        (base64.b64encode(b"\x1f\x8bnot gzip at all"), "not gzip"),
        (base64.b64encode(gzip.compress(b"[1, 2]")), "not a release"),
        (base64.b64encode(gzip.compress(b'{"version": "three"}')), "not a release"),
        (base64.b64encode(gzip.compress(b"{")), "not JSON"),
    ],
)
def test_a_broken_release_is_named_not_raised_as_anything_else(data: bytes, why: str) -> None:
    with pytest.raises(ReleaseError, match=why):
        decode_release(data, "Secret apps/sh.helm.release.v1.web.v3")


def test_a_gzip_bomb_stops_at_the_limit() -> None:
    # 40 MiB of spaces compress to ~40 KiB: unpacked whole it would take the memory.
    bomb = base64.b64encode(gzip.compress(b"{" + b" " * (MAX_RELEASE_BYTES + (8 << 20)) + b"}"))
    assert len(bomb) < 1 << 20
    with pytest.raises(ReleaseError, match="larger than 8 MiB"):
        decode_release(bomb)


def test_what_the_dashboard_does_not_show_is_skipped_not_built() -> None:
    """A Secret's content is anyone's who may write Secrets in the namespace: millions of
    objects in a chart's files cost a skip, values too large or deep are refused by name."""
    crowded = dict(RELEASE, chart={**RELEASE["chart"], "files": [{}] * 2_000_000})
    packed = stored(crowded)
    assert len(packed) < 1 << 20
    release = decode_release(packed)
    assert summary(release, "apps").chart == "nginx"
    deep: object = 1
    for _ in range(200):
        deep = {"a": deep}
    with pytest.raises(ReleaseError, match="nest deeper than 64"):
        values_of(decode_release(stored(dict(RELEASE, config=deep))))
    big = {"blob": "x" * (2 << 20)}
    with pytest.raises(ReleaseError, match="values are larger than"):
        values_of(decode_release(stored(dict(RELEASE, config=big))))
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ReleaseError, match="not JSON"):
        decode_release(base64.b64encode(gzip.compress(b'{"hooks": ' + nested + b"}")))


def test_the_newest_revision_of_each_release_is_its_current_one() -> None:
    def meta(ns: str, name: str, revision: str, owner: str = "helm") -> dict[str, Any]:
        labels = {"owner": owner, "name": name, "version": revision}
        return {"metadata": {"namespace": ns, "name": f"{name}.v{revision}", "labels": labels}}

    items = [
        meta("a", "web", "9"),
        meta("a", "web", "10"),  # numbers, not text: 10 is after 9
        meta("b", "web", "1"),  # the same name in another namespace is another release
        meta("a", "db", "2"),
        meta("a", "other", "5", owner="someone"),  # not helm's
    ]
    newest = latest_revisions(items)
    assert {k: v["name"] for k, v in newest.items()} == {
        ("a", "web"): "web.v10",
        ("b", "web"): "web.v1",
        ("a", "db"): "db.v2",
    }


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2026-12-07T03:55:12Z", "2026-12-07 03:55:12 UTC"),
        ("2026-12-07T03:55:12.5-02:00", "2026-12-07 05:55:12 UTC"),
        ("", ""),
        ("yesterday", "yesterday"),
        ("0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00+05:00"),  # before year 1 in UTC
    ],
)
def test_times_show_in_utc(text: str, shown: str) -> None:
    assert timestamp_text(text) == shown
