"""The daemon (`nftproxy run`): a source of cluster state (the Kubernetes API, or a directory
of manifests) feeds one Sink, which feeds the Proxier's sync loop; around it, the health and
metrics servers, healthCheckNodePort servers, conntrack cleaning and the node's addresses."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nftproxy import conntrack, health, metrics
from nftproxy.config import NodeConfig, service_cidr_union
from nftproxy.interfaces import InterfaceAddresses
from nftproxy.kernel.backend import open_backend
from nftproxy.model import EndpointSlice, Family, Service, ServiceName, SliceName
from nftproxy.proxier import DEFAULT_VERIFY_PERIOD, Proxier
from nftproxy.sources.manifests import DEFAULT_LIMITS, ReadLimits
from nftproxy.sources.watching import ManifestDirectory

__all__ = ["DaemonOptions", "MissingInputs", "ProxierSink", "run"]

log = logging.getLogger("nftproxy")


class MissingInputs(Exception):
    """A manifest path that does not exist: a typo must not start a daemon that deletes
    every Service it does not see."""


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """Everything `run` needs, flags and config file already merged (see cli)."""

    node: NodeConfig
    netns: str | None = None
    backend: str = "auto"
    min_sync_period: float = 1.0
    sync_burst: int = 2
    verify_period: float = DEFAULT_VERIFY_PERIOD
    health_timeout: float = 60.0
    # "" turns a server off.
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    # A port that cannot be bound is fatal, rather than retried every 5 s (kube-proxy's).
    bind_address_hard_fail: bool = False
    conntrack: conntrack.ConntrackSettings = field(default_factory=conntrack.ConntrackSettings)
    # The source: manifest paths, else the API (kubeconfig None: KUBECONFIG or in-cluster).
    manifests: tuple[str, ...] = ()
    poll_interval: float = 1.0
    limits: ReadLimits = DEFAULT_LIMITS
    kubeconfig: str | None = None
    # Given by flags: the Node object's zone label and addresses do not replace them.
    fixed_zone: bool = False
    fixed_node_ips: bool = False


class ProxierSink:
    """The Sink in front of a Proxier.

    Nothing reaches the Proxier until both kinds have been listed once, so it never programs
    Services without their endpoints: the first list of one kind waits here for the other.
    From then on the Proxier's own store is the only copy of the cluster's objects.
    ServiceCIDR ranges join `flagged_cidrs`, those of the node's flags.
    """

    def __init__(self, proxier: Proxier, flagged_cidrs: tuple[str, ...] = ()) -> None:
        self.proxier = proxier
        self._flagged_cidrs = flagged_cidrs
        self._lock = threading.Lock()
        self._services: dict[ServiceName, Service] | None = None
        self._slices: dict[SliceName, EndpointSlice] | None = None
        self._live = False

    @property
    def ready(self) -> bool:
        return self._live

    def replace_services(self, services: Mapping[ServiceName, Service]) -> None:
        with self._lock:
            if self._live:
                self.proxier.replace_services(services)
                return
            self._services = dict(services)
            self._go_live_if_complete()

    def replace_slices(self, slices: Mapping[SliceName, EndpointSlice]) -> None:
        with self._lock:
            if self._live:
                self.proxier.replace_slices(slices)
                return
            self._slices = dict(slices)
            self._go_live_if_complete()

    def replace_all(
        self,
        services: Mapping[ServiceName, Service],
        slices: Mapping[SliceName, EndpointSlice],
        *,
        complete: bool = True,
        service_cidrs: tuple[str, ...] | None = None,
    ) -> None:
        with self._lock:
            # Whether to keep what is unknown first: the sync that the new ranges may
            # wake must already know it.
            self.proxier.set_keep(not complete)
            if service_cidrs is not None:
                self.set_service_cidrs(service_cidrs)
            self.proxier.replace_all(services, slices)
            self._services = self._slices = None
            self._live = True

    def _go_live_if_complete(self) -> None:
        if self._services is not None and self._slices is not None:
            self.proxier.replace_all(self._services, self._slices)
            self._services = self._slices = None
            self._live = True

    def update_service(self, name: ServiceName, service: Service | None) -> None:
        with self._lock:
            if self._live:
                self.proxier.update_service(name, service)
            elif self._services is not None:
                _put(self._services, name, service)

    def update_slice(self, name: SliceName, endpoint_slice: EndpointSlice | None) -> None:
        with self._lock:
            if self._live:
                self.proxier.update_slice(name, endpoint_slice)
            elif self._slices is not None:
                _put(self._slices, name, endpoint_slice)

    def set_service_cidrs(self, cidrs: tuple[str, ...]) -> None:
        ranges = service_cidr_union(self._flagged_cidrs, cidrs)
        if ranges != self.proxier.node.service_cidrs:
            log.info("service CIDRs: %s", ", ".join(ranges) or "none")
            self.proxier.update_node(service_cidrs=ranges)


def _put(store: dict[Any, Any], key: Any, value: Any | None) -> None:
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value


def run(options: DaemonOptions, stop: threading.Event | None = None) -> None:
    """Serve until `stop` is set (by default: SIGTERM or SIGINT, which needs the main
    thread). The rules stay in place when it returns; everything it started is closed,
    also when starting fails half-way."""
    with contextlib.ExitStack() as started:
        _serve(options, stop, started)


def _serve(
    options: DaemonOptions, stop: threading.Event | None, started: contextlib.ExitStack
) -> None:
    backend = open_backend(options.netns, prefer=options.backend)
    loop: threading.Thread | None = None

    def close_backend() -> None:
        if loop is None or not loop.is_alive():  # never under a sync still running
            backend.close()

    started.callback(close_backend)
    # As kube-proxy does, refuse to start without the privilege, rather than fail every
    # sync: one netlink round trip that needs what every sync needs.
    backend.generation()
    proxier = Proxier(
        backend,
        options.node,
        min_sync_period=options.min_sync_period,
        sync_burst=options.sync_burst,
        verify_period=options.verify_period,
    )
    if stop is None:
        stop = _stop_on_signals()
    proxy_health = health.ProxierHealth(health_timeout=options.health_timeout)
    proxy_health.attach(proxier)
    proxy_metrics = metrics.Metrics()
    proxy_metrics.attach(proxier)
    for server in _start_servers(options, proxy_health, proxy_metrics):
        started.callback(server.close)
    check_servers = health.HealthCheckServers(health=proxy_health, netns=options.netns)
    started.callback(check_servers.close)
    check_servers.follow(proxier)
    cleaner = conntrack.ConntrackCleaner(options.netns)
    started.callback(cleaner.close)
    proxier.clear_stale_udp = cleaner.clear_stale
    try:
        for name, (old, new) in cleaner.apply_settings(options.conntrack).items():
            log.info("conntrack: %s %d -> %d", name, old, new)
    except OSError as exc:  # a read-only /proc/sys (a container without privileges, say)
        log.warning("could not set the conntrack timeouts: %s", exc)
    interfaces = _follow_addresses(options.netns, proxier, stop)
    if interfaces is not None:
        started.callback(interfaces.close)
    loop = threading.Thread(target=proxier.run, args=(stop,), name="sync", daemon=True)
    threading.Thread(
        target=proxier.watch_commits, args=(stop,), name="commits", daemon=True
    ).start()

    def stop_the_loop() -> None:
        stop.set()
        if loop is not None and loop.is_alive():
            loop.join(timeout=30)

    started.callback(stop_the_loop)
    sink = ProxierSink(proxier, options.node.service_cidrs)
    if options.manifests:
        _serve_manifests(options, sink, proxy_health, loop, stop)
    else:
        _serve_api(options, sink, loop, stop)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping; the rules stay in place", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _start_servers(
    options: DaemonOptions, proxy_health: health.ProxierHealth, proxy_metrics: metrics.Metrics
) -> list[Any]:
    servers: list[Any] = []

    def listen(start: Callable[[], Any]) -> None:
        # kube-proxy's choice: a port that cannot be bound is retried every 5 s while the
        # rules are served, unless bindAddressHardFail makes it fatal (exit 1).
        servers.append(start() if options.bind_address_hard_fail else health.Retrying(start))

    healthz, metrics_at = options.healthz_bind_address, options.metrics_bind_address
    try:
        if healthz:
            listen(lambda: health.serve_healthz(proxy_health, healthz))
        if metrics_at:
            listen(lambda: proxy_metrics.serve(metrics_at))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


def _where(options: DaemonOptions) -> str:
    return f"network namespace {options.netns}" if options.netns else "this network namespace"


def _serve_manifests(
    options: DaemonOptions,
    sink: ProxierSink,
    proxy_health: health.ProxierHealth,
    loop: threading.Thread,
    stop: threading.Event,
) -> None:
    source = ManifestDirectory(
        options.manifests,
        service_proxy_name=options.node.service_proxy_name,
        limits=options.limits,
    )
    missing = source.missing()
    if missing:
        names = ", ".join(map(str, missing))
        raise MissingInputs(f"--manifests {names}: no such file or directory")
    source.scan()
    source.feed(sink)
    sink.proxier.request_full_sync()
    log.info("serving %s from %s", _where(options), ", ".join(options.manifests))
    loop.start()
    scanned = proxy_health.watch("manifest scan")
    while not stop.wait(options.poll_interval):
        if source.scan():
            source.feed(sink)
        scanned()


def _serve_api(
    options: DaemonOptions, sink: ProxierSink, loop: threading.Thread, stop: threading.Event
) -> None:
    from nftproxy.kube import client, reflector

    if options.kubeconfig or os.environ.get("KUBECONFIG"):
        config = client.load_kubeconfig(options.kubeconfig)
    else:
        config = client.in_cluster()
    proxier = sink.proxier
    node = proxier.node

    def on_node(info: reflector.NodeInfo | None) -> None:
        # The Node's zone label and addresses fill in what flags did not say.
        if info is None:
            return
        ips = node.node_ips if options.fixed_node_ips else (*info.internal_ips, *info.external_ips)
        zone = node.zone if options.fixed_zone else info.zone or ""
        if (zone, tuple(ips)) != (proxier.node.zone, proxier.node.node_ips):
            log.info("node %s: zone %r, addresses %s", info.name, zone, ", ".join(ips))
            proxier.update_node(zone=zone, node_ips=tuple(ips))

    watcher = reflector.KubeWatcher(
        client.Client(config),
        sink,
        node_name=node.node_name or None,
        on_node=on_node,
        watch_service_cidrs=True,
        service_proxy_name=node.service_proxy_name,
    )
    log.info("serving %s from the Kubernetes API as node %s", _where(options), node.node_name)
    watcher.start()
    try:
        # Like kube-proxy, no sync before Services and EndpointSlices are both listed:
        # an empty first sync would only be thrown away (and cost a generation build).
        while not stop.is_set() and not watcher.wait_synced(1.0):
            pass
        if not stop.is_set():
            loop.start()
        stop.wait()
    finally:
        watcher.stop()


def _nodeport_addresses_text(node: NodeConfig, family: Family) -> str:
    if node.nodeport_match_all(family):
        return f"every local IPv{family} address"
    ips = node.nodeport_ips_of(family)
    return f"IPv{family} {', '.join(ips)}" if ips else f"no IPv{family} address"


def _follow_addresses(
    netns: str | Path | None, proxier: Proxier, stop: threading.Event
) -> InterfaceAddresses | None:
    """With --nodeport-addresses, NodePorts are served on the node's own addresses in
    them: those of the interfaces of the namespace it programs, read now, again when the
    kernel says they changed (in a thread of its own) and before each full sync or
    periodic comparison, plus the configured node IPs."""
    if not proxier.node.nodeport_addresses:
        return None  # every local address: `fib daddr type local` needs no list
    interfaces = InterfaceAddresses(str(netns) if netns is not None else None)
    configured = proxier.node.node_ips
    lock = threading.Lock()
    served: list[str] = []

    def refresh() -> None:
        with lock:  # the watching thread and the sync loop's
            found = {ipaddress.ip_address(a) for a in (*interfaces.read(), *configured)}
            ips = tuple(str(a) for a in sorted(found, key=lambda a: (a.version, a.packed)))
            if ips != proxier.node.interface_ips:
                proxier.update_node(interface_ips=ips)
            # Also when only the node IPs changed (the Node object): `primary` follows them.
            node = proxier.node
            now = [_nodeport_addresses_text(node, f) for f in node.families]
            if now != served:
                served[:] = now
                log.info("NodePorts are served on %s", "; ".join(now))
                for warning in node.nodeport_warnings():
                    log.warning("%s", warning)

    def watch() -> None:
        while not stop.is_set():
            try:
                if interfaces.wait(0.5):
                    refresh()
            except OSError as exc:
                if stop.is_set():
                    return
                log.warning("following the node's addresses: %s; read at each full sync", exc)
                return

    refresh()
    proxier.refresh_node = refresh
    threading.Thread(target=watch, name="addresses", daemon=True).start()
    return interfaces
