"""Prometheus metrics: kube-proxy's names, the SyncStats listener, and /metrics over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nftproxy.metrics import PROGRAMMING_BUCKETS, SYNC_BUCKETS, Metrics
from nftproxy.proxier import SyncResult, SyncStats
from tests.support.builders import NODE, endpoints, ep, port, service

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

KUBE_PROXY_NAMES = {
    "kubeproxy_sync_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_full_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_network_programming_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_endpoint_changes": "counter",
    "kubeproxy_sync_proxy_rules_service_changes": "counter",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures": "counter",
    "nftproxy_elements": "gauge",
    "nftproxy_chains": "gauge",
    "nftproxy_syncs": "counter",
    "nftproxy_external_changes": "counter",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def fake_proxier(stats: SyncStats) -> Any:
    ruleset = SimpleNamespace(
        elements={"a": {1: None, 2: None}, "b": {3: None}}, chains={"x": 1, "y": 2, "z": 3}
    )
    return SimpleNamespace(stats=stats, ruleset=ruleset)


def run_sync(stats: SyncStats, mode: str, seconds: float, *, full: bool) -> None:
    """What Proxier.sync does to its stats, then the listeners."""
    stats.syncs += 1
    if full:
        stats.full_syncs += 1
    else:
        stats.partial_syncs += 1
    for listener in stats.listeners:
        listener(SyncResult(mode, 3, seconds, 1))


def test_every_name_and_type_and_a_private_registry() -> None:
    metrics = Metrics()
    assert metrics.registry is not REGISTRY
    families = {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}
    assert families == KUBE_PROXY_NAMES
    Metrics()  # a second instance does not clash: nothing global


def test_syncs_feed_histograms_gauges_and_counters() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    stats = SyncStats()
    metrics.attach(fake_proxier(stats))
    run_sync(stats, "generation", 0.2, full=True)
    clock.now += 10
    run_sync(stats, "incremental", 0.003, full=False)
    run_sync(stats, "noop", 0.0005, full=False)
    stats.failures = 2
    stats.external_changes = 1
    metrics.queued(services=1, endpoints=4)
    metrics.queued(endpoints=1)
    metrics.observe_programming(1.5)
    metrics.observe_programming(-1)  # clock skew: not observed
    text = metrics.render().decode()

    assert value(text, "kubeproxy_sync_proxy_rules_duration_seconds_count") == 3
    assert value(text, "kubeproxy_sync_proxy_rules_duration_seconds_sum") == pytest.approx(0.2035)
    assert value(text, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert value(text, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 2
    assert (
        value(text, "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket", le="0.001") == 1
    )
    assert value(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == clock.now
    assert value(text, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == clock.now
    assert value(text, "kubeproxy_sync_proxy_rules_service_changes_total") == 1
    assert value(text, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 5
    assert value(text, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total") == 2
    assert value(text, "kubeproxy_network_programming_duration_seconds_count") == 1
    assert value(text, "kubeproxy_network_programming_duration_seconds_bucket", le="1.0") == 0
    assert value(text, "kubeproxy_network_programming_duration_seconds_bucket", le="2.0") == 1
    assert value(text, "nftproxy_syncs_total", mode="full") == 1
    assert value(text, "nftproxy_syncs_total", mode="partial") == 2
    assert value(text, "nftproxy_external_changes_total") == 1
    assert value(text, "nftproxy_elements") == 3
    assert value(text, "nftproxy_chains") == 3


def test_kube_proxy_buckets() -> None:
    assert SYNC_BUCKETS[0] == 0.001 and len(SYNC_BUCKETS) == 15
    assert SYNC_BUCKETS[-1] == pytest.approx(16.384)
    assert PROGRAMMING_BUCKETS[:3] == (0.25, 0.5, 1.0)
    assert PROGRAMMING_BUCKETS[-1] == 300.0
    assert len(PROGRAMMING_BUCKETS) == 2 + 59 + 12 + 7


def test_metrics_over_http_on_loopback() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.queued(services=2)
    with metrics.serve("127.0.0.1:0") as server:
        url = f"http://127.0.0.1:{server.port}"
        with _OPENER.open(url + "/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = resp.read().decode()
        assert value(text, "kubeproxy_sync_proxy_rules_service_changes_total") == 2
        # As kube-proxy's metrics address: its mode, and a plain liveness answer.
        for path, body in (("/proxyMode", b"nftables"), ("/healthz", b"ok")):
            with _OPENER.open(url + path, timeout=5) as resp:
                assert resp.status == 200 and resp.read() == body
                assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        for path in ("/", "/proxymode", "/metricsx"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _OPENER.open(url + path, timeout=5)
            assert err.value.code == 404
            err.value.close()


def test_attached_to_a_real_proxier(netns: str) -> None:
    from nftproxy.kernel.backend import open_backend
    from nftproxy.proxier import Proxier

    proxier = Proxier(open_backend(netns), NODE)
    metrics = Metrics()
    metrics.attach(proxier)
    web = service("web", ports=[port(80, node_port=30080)])
    sl = endpoints("web", [ep("10.244.1.1")])
    proxier.replace_all({web.id: web}, {(sl.namespace, sl.name): sl})
    proxier.sync()
    sl2 = endpoints("web", [ep("10.244.1.1"), ep("10.244.1.2")])
    proxier.replace_all({web.id: web}, {(sl2.namespace, sl2.name): sl2})
    proxier.sync()
    text = metrics.render().decode()
    assert value(text, "nftproxy_syncs_total", mode="full") == 1
    assert value(text, "nftproxy_syncs_total", mode="partial") == 1
    assert value(text, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert value(text, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 1
    assert value(text, "nftproxy_elements") > 0
    assert value(text, "nftproxy_chains") > 0
