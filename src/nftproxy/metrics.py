"""Prometheus metrics under kube-proxy's names (``pkg/proxy/metrics``, plus a few of
nftproxy's own) and their server. One collector reads the state at scrape time, on a
registry of its own, so the series are exactly kube-proxy's. The list: docs/daemon.md."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nftproxy.config import split_host_port
from nftproxy.health import HTTPService

__all__ = [
    "DEFAULT_METRICS_BIND_ADDRESS",
    "DEFAULT_METRICS_PORT",
    "PLAIN_PATHS",
    "PROGRAMMING_BUCKETS",
    "SYNC_BUCKETS",
    "Histogram",
    "Metrics",
    "MetricsServer",
]

if TYPE_CHECKING:
    from nftproxy.proxier import Proxier, SyncResult, SyncStats

DEFAULT_METRICS_PORT = 10249
DEFAULT_METRICS_BIND_ADDRESS = f"127.0.0.1:{DEFAULT_METRICS_PORT}"

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy: MergeBuckets(LinearBuckets(0.25, 0.25, 2), LinearBuckets(1, 1, 59),
#                          LinearBuckets(60, 5, 12), LinearBuckets(120, 30, 7))
PROGRAMMING_BUCKETS = (
    0.25,
    0.5,
    *(float(i) for i in range(1, 60)),
    *(60.0 + 5 * i for i in range(12)),
    *(120.0 + 30 * i for i in range(7)),
)


class Histogram:
    """Cumulative buckets and a sum, exposed by the collector (thread-safe)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self._lock = threading.Lock()
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def family(self) -> HistogramMetricFamily:
        with self._lock:
            counts, total = list(self._counts), self._sum
        bounds = [*(_le(b) for b in self.buckets), "+Inf"]
        cumulative = list(itertools.accumulate(counts))
        return HistogramMetricFamily(
            self.name, self.doc, buckets=list(zip(bounds, cumulative, strict=True)), sum_value=total
        )


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """The registry and the hooks that feed it (names: docs/daemon.md)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock

        histogram = Histogram
        self.sync_duration = histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            SYNC_BUCKETS,
        )
        self.full_sync_duration = histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            SYNC_BUCKETS,
        )
        self.partial_sync_duration = histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            SYNC_BUCKETS,
        )
        self.programming_duration = histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            PROGRAMMING_BUCKETS,
        )
        self._lock = threading.Lock()
        self.last_sync_timestamp = 0.0
        self.last_queued_timestamp = 0.0
        self.endpoint_changes = 0
        self.service_changes = 0
        self.elements = 0
        self.chains = 0
        self._stats: SyncStats | None = None
        self._full_seen = 0
        self.histograms = (
            self.sync_duration,
            self.full_sync_duration,
            self.partial_sync_duration,
            self.programming_duration,
        )
        self.registry.register(_StateCollector(self))

    # --- hooks ----------------------------------------------------------------------------

    def attach(self, proxier: Proxier) -> None:
        """Observe every successful sync of `proxier`, and read its counters at scrape time."""
        self._stats = proxier.stats
        self._full_seen = proxier.stats.full_syncs

        def on_sync(result: SyncResult) -> None:
            # Listeners run on the sync thread once the sync is done: the ruleset is stable.
            self.on_sync(result, ruleset=proxier.ruleset)

        proxier.stats.listeners.append(on_sync)
        proxier.stats.queue_listeners.append(
            lambda services, slices: self.queued(services=services, endpoints=slices)
        )

    def on_sync(self, result: SyncResult, *, ruleset: Any = None, full: bool | None = None) -> None:
        """Record one successful sync. Full or partial is read from the attached proxier's
        counters (the listener runs after they are updated) unless `full` says."""
        if full is None:
            stats = self._stats
            if stats is not None:
                full = stats.full_syncs > self._full_seen
                self._full_seen = stats.full_syncs
            else:
                full = result.mode == "generation"
        self.sync_duration.observe(result.seconds)
        (self.full_sync_duration if full else self.partial_sync_duration).observe(result.seconds)
        with self._lock:
            self.last_sync_timestamp = self.clock()
            if ruleset is not None:
                self.elements = sum(len(e) for e in ruleset.elements.values())
                self.chains = len(ruleset.chains)

    def queued(self, *, services: int = 0, endpoints: int = 0) -> None:
        """Changes were queued for the next sync (Service and EndpointSlice events)."""
        with self._lock:
            self.service_changes += services
            self.endpoint_changes += endpoints
            self.last_queued_timestamp = self.clock()

    def observe_programming(self, seconds: float) -> None:
        """Latency from a change in the API (e.g. an EndpointSlice's
        endpoints.kubernetes.io/last-change-trigger-time) to its rules being in the kernel."""
        if seconds >= 0:
            self.programming_duration.observe(seconds)

    # --- output ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def serve(self, bind_address: str = DEFAULT_METRICS_BIND_ADDRESS) -> MetricsServer:
        host, port = split_host_port("metrics-bind-address", bind_address, DEFAULT_METRICS_PORT)
        return MetricsServer(self, host, port)


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m._lock:
            last_sync, last_queued = m.last_sync_timestamp, m.last_queued_timestamp
            endpoint_changes, service_changes = m.endpoint_changes, m.service_changes
            elements, chains = m.elements, m.chains
        stats = m._stats
        for histogram in m.histograms:
            yield histogram.family()
        yield GaugeMetricFamily(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            value=last_sync,
        )
        yield GaugeMetricFamily(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            value=last_queued,
        )
        yield CounterMetricFamily(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            value=endpoint_changes,
        )
        yield CounterMetricFamily(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            value=service_changes,
        )
        yield CounterMetricFamily(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "Total number of nftables sync failures",
            value=stats.failures if stats else 0,
        )
        yield GaugeMetricFamily(
            "nftproxy_elements", "Set and map elements in the desired ruleset", value=elements
        )
        yield GaugeMetricFamily("nftproxy_chains", "Chains in the desired ruleset", value=chains)
        syncs = CounterMetricFamily(
            "nftproxy_syncs_total", "Successful syncs by mode", labels=["mode"]
        )
        syncs.add_metric(["full"], stats.full_syncs if stats else 0)
        syncs.add_metric(["partial"], stats.partial_syncs if stats else 0)
        yield syncs
        yield CounterMetricFamily(
            "nftproxy_external_changes_total",
            "Times the nftproxy table was found changed by someone else",
            value=stats.external_changes if stats else 0,
        )


# What kube-proxy's metrics address serves besides /metrics, for the tools (and the
# e2e spec "should check kube-proxy urls") that ask it: the proxy mode, and a liveness
# answer that does not depend on syncs (those are /healthz on the health port).
PLAIN_PATHS = {"/proxyMode": b"nftables", "/healthz": b"ok"}


class _MetricsHandler(BaseHTTPRequestHandler):
    server_version = "nftproxy"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            metrics: Metrics = self.server.service.metrics  # type: ignore[attr-defined]
            self._reply(metrics.render(), CONTENT_TYPE_LATEST)
        elif path in PLAIN_PATHS:
            self._reply(PLAIN_PATHS[path], "text/plain; charset=utf-8")
        else:
            self.send_error(404)

    def _reply(self, data: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer(HTTPService):
    """``/metrics``, ``/proxyMode`` and ``/healthz`` on ``--metrics-bind-address``."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 10249) -> None:
        self.metrics = metrics
        super().__init__(host, port, _MetricsHandler, what="metrics")
