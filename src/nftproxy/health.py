"""kube-proxy's health contract: `/healthz` and `/livez` (`ProxierHealth`) and the
healthCheckNodePort servers (`HealthCheckServers`), as kube-proxy's pkg/proxy/healthcheck
(proxier_health.go, service_health.go) computes them. What they answer, and when, is in
docs/daemon.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

from nftproxy.config import NodeConfig, split_host_port
from nftproxy.kernel.netns import run_in_netns
from nftproxy.model import EndpointSlice, Service, ServiceName

__all__ = [
    "DEFAULT_HEALTHZ_BIND_ADDRESS",
    "DEFAULT_HEALTHZ_PORT",
    "TO_BE_DELETED_TAINT",
    "HTTPService",
    "HealthCheckServers",
    "HealthzServer",
    "JSONHandler",
    "ListenError",
    "ProxierHealth",
    "Retrying",
    "go_time",
    "health_check_hosts",
    "health_check_ports",
    "local_ready_endpoints",
    "rfc3339",
    "serve_healthz",
]

if TYPE_CHECKING:
    from nftproxy.proxier import Proxier, SyncResult

log = logging.getLogger("nftproxy.health")

DEFAULT_HEALTHZ_PORT = 10256
DEFAULT_HEALTHZ_BIND_ADDRESS = f"0.0.0.0:{DEFAULT_HEALTHZ_PORT}"
# kube-proxy's ToBeDeletedTaint: set by the cluster autoscaler on nodes it will remove.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


class ListenError(OSError):
    """A server that cannot listen: the message names the server, its address and why, on
    one line (``healthz: cannot listen on 0.0.0.0:10256: address already in use``)."""

    def __init__(self, what: str, host: str, port: int, cause: OSError) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = (cause.strerror or str(cause)).lower()
        super().__init__(f"{what}: cannot listen on {where}: {reason}")
        self.errno = cause.errno
        self.what, self.where = what, where


class Retrying:
    """A server that listens as soon as it can: started now, or else tried again every
    `period` seconds in a thread of its own until it listens or is closed. kube-proxy does
    the same unless bindAddressHardFail: the rules matter more than the health port, and
    a port still held (say, by the kube-proxy being replaced) is usually freed soon."""

    def __init__(self, start: Callable[[], HTTPService], *, period: float = 5.0) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.server: HTTPService | None = None
        try:
            self.server = start()
        except ListenError as exc:
            log.error("%s; trying again every %gs", exc, period)
            self._thread = threading.Thread(
                target=self._retry,
                args=(period, exc.what, str(exc)),
                name=f"listen-{exc.what}",
                daemon=True,
            )
            self._thread.start()

    def _retry(self, period: float, what: str, last: str) -> None:
        while not self._closed.wait(period):
            try:
                server = self._start()
            except ListenError as exc:
                # Said once per reason, not every few seconds.
                if str(exc) != last:
                    log.error("%s; trying again every %gs", exc, period)
                last = str(exc)
                continue
            with self._lock:
                if self._closed.is_set():
                    server.close()
                    return
                self.server = server
            log.info("%s: listening on %s", what, server.address)
            return

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.close()


def go_time(t: float | None) -> str:
    """A Unix time in Go's ``time.Time.String()`` layout (UTC); None is Go's zero time."""
    if t is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    when = dt.datetime.fromtimestamp(t, dt.UTC)
    frac = f"{when.microsecond:06d}".rstrip("0")
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


def rfc3339(t: float | None) -> str | None:
    """A Unix time as RFC 3339 in UTC with microseconds; None stays None."""
    if t is None:
        return None
    return (
        dt.datetime.fromtimestamp(t, dt.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


class ProxierHealth:
    """The proxy's own health, as kube-proxy's ProxierHealthServer computes it (docs/daemon.md)."""

    def __init__(
        self, health_timeout: float = 60.0, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.health_timeout = health_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_pending: float | None = None
        self._node_eligible = True
        self._turns: dict[str, float] = {}  # loop -> when it last turned

    def queued_update(self) -> None:
        """A change that needs a sync arrived; keeps the time of the oldest one pending."""
        with self._lock:
            if self._oldest_pending is None:
                self._oldest_pending = self.clock()

    def updated(self, _result: SyncResult | None = None) -> None:
        """A sync succeeded: the rules reflect everything queued so far."""
        with self._lock:
            self._oldest_pending = None
            self._last_updated = self.clock()

    def attach(self, proxier: Proxier) -> None:
        """Follow `proxier`: changes queued, each successful sync, and its loop turning."""
        proxier.stats.listeners.append(self.updated)
        proxier.stats.queue_listeners.append(lambda _services, _slices: self.queued_update())
        proxier.stats.tick_listeners.append(self.watch("sync loop"))

    def watch(self, loop: str) -> Callable[[], None]:
        """Register a loop that must keep turning; it calls the function returned on every
        turn. One that has not turned for `health_timeout` makes the proxy unhealthy."""

        def turned() -> None:
            with self._lock:
                self._turns[loop] = self.clock()

        turned()
        return turned

    def stuck(self) -> list[str]:
        """Loops that have not turned for `health_timeout`."""
        now = self.clock()
        with self._lock:
            return sorted(n for n, t in self._turns.items() if now - t >= self.health_timeout)

    def sync_node(self, node: Mapping[str, Any] | None) -> None:
        """Eligibility from a Node object (API JSON): not deleted, not about to be removed.
        None (the Node is gone) makes the node ineligible."""
        eligible = node is not None
        if node is not None:
            if (node.get("metadata") or {}).get("deletionTimestamp"):
                eligible = False
            taints: Iterable[Mapping[str, Any]] = (node.get("spec") or {}).get("taints") or ()
            if any(t.get("key") == TO_BE_DELETED_TAINT for t in taints):
                eligible = False
        self.set_node_eligible(eligible)

    def set_node_eligible(self, eligible: bool) -> None:
        with self._lock:
            self._node_eligible = eligible

    @property
    def node_eligible(self) -> bool:
        with self._lock:
            return self._node_eligible

    def status(self) -> tuple[bool, float | None]:
        """(healthy, last successful sync time) ignoring node eligibility."""
        with self._lock:
            pending, last = self._oldest_pending, self._last_updated
        if pending is not None and self.clock() - pending >= self.health_timeout:
            return False, last
        return not self.stuck(), last

    def is_healthy(self) -> bool:
        return self.status()[0]

    def healthz(self) -> tuple[int, dict[str, Any]]:
        eligible = self.node_eligible
        healthy, last = self.status()
        return self._answer(healthy and eligible, last, {"nodeEligible": eligible})

    def livez(self) -> tuple[int, dict[str, Any]]:
        healthy, last = self.status()
        return self._answer(healthy, last, {})

    def _answer(
        self, healthy: bool, last: float | None, extra: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        now = self.clock()
        with self._lock:
            pending = self._oldest_pending
        # Healthy: lastUpdated is "now", as kube-proxy reports it for older clients. The two
        # fields after it are nftproxy's own: when the rules last took in every change, and
        # since when a change waits (the app dashboard tells from them whether this node
        # has programmed a Service's latest change).
        body = {
            "lastUpdated": go_time(now if healthy else last),
            "currentTime": go_time(now),
            "lastSynced": rfc3339(last),
            "pendingSince": rfc3339(pending),
        }
        return (200 if healthy else 503), body | extra


# --- HTTP plumbing ------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Restarting the daemon must not fail on sockets left in TIME_WAIT.
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HTTPService:
    """One ThreadingHTTPServer serving in a daemon thread until `close`."""

    def __init__(
        self, host: str, port: int, handler: type[BaseHTTPRequestHandler], *, what: str
    ) -> None:
        cls = _Server6 if ":" in host else _Server
        try:
            self.server = cls((host, port), handler)
        except OSError as exc:
            raise ListenError(what, host, port, exc) from None
        self.server.service = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"http-{host}:{self.port}",
            daemon=True,
        )
        self.thread.start()

    @property
    def port(self) -> int:
        """The bound port (the one the kernel chose when asked for port 0)."""
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        """HOST:PORT as bound ([HOST]:PORT for IPv6)."""
        host = str(self.server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> HTTPService:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class JSONHandler(BaseHTTPRequestHandler):
    """Writes kube-proxy style JSON answers; subclasses implement `answer`."""

    server_version = "nftproxy"
    protocol_version = "HTTP/1.1"
    # A connection (and its thread) idle this long is closed: clients that keep
    # connections open must not pile up threads.
    timeout = 10
    quiet: ClassVar[bool] = True

    def answer(self) -> tuple[int, dict[str, Any]] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def do_GET(self) -> None:
        got = self.answer()
        if got is None:
            self.send_error(404)
            return
        status, body = got
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            log.debug("%s: " + format, self.address_string(), *args)

    @property
    def service(self) -> Any:
        return self.server.service  # type: ignore[attr-defined]


class _HealthzHandler(JSONHandler):
    def answer(self) -> tuple[int, dict[str, Any]] | None:
        health: ProxierHealth = self.service.health
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return health.healthz()
        if path == "/livez":
            return health.livez()
        return None


class HealthzServer(HTTPService):
    """``/healthz`` and ``/livez`` on ``--healthz-bind-address``."""

    def __init__(self, health: ProxierHealth, host: str = "0.0.0.0", port: int = 10256) -> None:
        self.health = health
        super().__init__(host, port, _HealthzHandler, what="healthz")


def serve_healthz(
    health: ProxierHealth, bind_address: str = DEFAULT_HEALTHZ_BIND_ADDRESS
) -> HealthzServer:
    host, port = split_host_port("healthz-bind-address", bind_address, DEFAULT_HEALTHZ_PORT)
    return HealthzServer(health, host, port)


# --- healthCheckNodePort ------------------------------------------------------------------


class _ServiceHandler(JSONHandler):
    def answer(self) -> tuple[int, dict[str, Any]] | None:
        listener: _ServiceListener = self.service
        name, count = listener.state()
        healthy = listener.proxy_healthy()
        body = {
            "service": {"namespace": name.namespace, "name": name.name},
            "localEndpoints": count,
            "serviceProxyHealthy": healthy,
        }
        return (200 if count > 0 and healthy else 503), body


class _ServiceListener(HTTPService):
    def __init__(
        self,
        host: str,
        port: int,
        name: ServiceName,
        count: int,
        proxy_healthy: Callable[[], bool],
    ) -> None:
        self._lock = threading.Lock()
        self._name, self._count = name, count
        self.proxy_healthy = proxy_healthy
        super().__init__(host, port, _ServiceHandler, what=f"healthCheckNodePort of {name}")

    def state(self) -> tuple[ServiceName, int]:
        with self._lock:
            return self._name, self._count

    def set(self, name: ServiceName, count: int) -> None:
        with self._lock:
            self._name, self._count = name, count


class HealthCheckServers:
    """The healthCheckNodePort listeners: `sync` opens, updates and closes them.

    A port that cannot be bound (in use) is logged, listed in `errors`, and tried again
    on the next `sync`, as kube-proxy does.
    """

    def __init__(
        self,
        bind_address: str = "0.0.0.0",
        health: ProxierHealth | None = None,
        *,
        netns: str | None = None,
    ) -> None:
        self.bind_address = bind_address
        # The node's namespace: its addresses are where these ports must answer.
        self.netns = netns
        # Where each port listens; `follow` makes them the node's NodePort addresses.
        self.hosts: tuple[str, ...] = (bind_address,)
        self.health = health
        self._lock = threading.Lock()
        self._listeners: dict[tuple[int, str], _ServiceListener] = {}
        self.errors: dict[int, str] = {}

    def _proxy_healthy(self) -> bool:
        return self.health is None or self.health.is_healthy()

    def sync(self, services: Mapping[int, tuple[ServiceName, int]]) -> None:
        """The complete wanted state: healthCheckNodePort -> (Service, local endpoints)."""
        with self._lock:
            hosts = self.hosts
            for port, host in list(self._listeners):
                if port not in services or host not in hosts:
                    log.info("closing healthCheckNodePort %s", _host_port(host, port))
                    self._listeners.pop((port, host)).close()
            self.errors = {p: e for p, e in self.errors.items() if p in services}
            for port, (name, count) in services.items():
                failed = False
                for host in hosts:
                    current = self._listeners.get((port, host))
                    if current is not None:
                        current.set(name, count)
                        continue
                    try:
                        self._listeners[port, host] = self._listen(host, port, name, count)
                    except OSError as exc:
                        failed = True
                        self.errors[port] = str(exc)
                        log.error("%s", exc)
                    else:
                        log.info(
                            "serving healthCheckNodePort %s for %s", _host_port(host, port), name
                        )
                if not failed:
                    self.errors.pop(port, None)

    def _listen(self, host: str, port: int, name: ServiceName, count: int) -> _ServiceListener:
        def make() -> _ServiceListener:
            return _ServiceListener(host, port, name, count, self._proxy_healthy)

        return run_in_netns(self.netns, make)

    def follow(self, proxier: Proxier) -> None:
        """Keep one listener per healthCheckNodePort of `proxier`'s Services, updated after
        every sync, failed ones too: the listeners follow the Services, not the kernel, so
        a deleted Service's port closes even while syncs fail (and answers unhealthy)."""

        def sync(_outcome: object) -> None:
            node = proxier.node
            me = node.node_name
            self.hosts = health_check_hosts(node, self.bind_address)
            self.sync(
                health_check_ports(
                    proxier.services(),
                    lambda sid: local_ready_endpoints(proxier.slices_of(sid), me),
                )
            )

        proxier.stats.listeners.append(sync)
        proxier.stats.failure_listeners.append(sync)

    @property
    def ports(self) -> frozenset[int]:
        with self._lock:
            return frozenset(port for port, _ in self._listeners)

    @property
    def listening(self) -> frozenset[tuple[int, str]]:
        """(port, address) of every listener."""
        with self._lock:
            return frozenset(self._listeners)

    def close(self) -> None:
        with self._lock:
            listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.close()


def health_check_hosts(node: NodeConfig, wildcard: str = "0.0.0.0") -> tuple[str, ...]:
    """Where healthCheckNodePorts listen, as in kube-proxy: on the node's NodePort addresses
    when --nodeport-addresses selects some (its primary IPs by default), else everywhere."""
    if any(cidr.endswith("/0") for cidr in node.nodeport_addresses):
        return (wildcard,)  # every address asked for
    # A family whose node IP is unknown adds none (kube-proxy knows none there either).
    return tuple(ip for f in node.families for ip in node.nodeport_ips_of(f)) or (wildcard,)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_ready_endpoints(slices: Iterable[EndpointSlice], node_name: str) -> int:
    """kube-proxy's localEndpoints: distinct ready endpoints on this node."""
    return len(
        {
            ep.ip
            for sl in slices
            for ep in sl.endpoints
            if ep.ready and node_name and ep.node_name == node_name
        }
    )


def health_check_ports(
    services: Iterable[Service], local_endpoints: Callable[[ServiceName], int]
) -> dict[int, tuple[ServiceName, int]]:
    """The `HealthCheckServers.sync` argument from model Services (those with a
    health_check_node_port, i.e. LoadBalancer + externalTrafficPolicy Local)."""
    out: dict[int, tuple[ServiceName, int]] = {}
    for svc in services:
        port = svc.health_check_node_port
        if port:
            out[port] = (svc.id, local_endpoints(svc.id))
    return out
