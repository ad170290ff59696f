"""kube-proxy's health contract over real HTTP on loopback: /healthz, /livez and the
healthCheckNodePort servers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from nftproxy.config import BindAddressError, split_host_port
from nftproxy.health import (
    HealthCheckServers,
    ProxierHealth,
    go_time,
    health_check_ports,
    local_ready_endpoints,
    rfc3339,
    serve_healthz,
)
from nftproxy.kernel.errors import NftError
from nftproxy.kernel.fake import FakeBackend
from nftproxy.model import Endpoint, EndpointSlice, Protocol, Service, ServiceName, ServicePort
from nftproxy.proxier import SyncResult, SyncStats

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with _OPENER.open(url, timeout=5) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
        e.close()
    return status, headers, json.loads(raw) if raw.startswith(b"{") else raw


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> ProxierHealth:
    return ProxierHealth(health_timeout=60.0, clock=clock)


@pytest.fixture
def healthz(health: ProxierHealth) -> Iterator[str]:
    with serve_healthz(health, "127.0.0.1:0") as server:
        yield f"http://127.0.0.1:{server.port}"


def test_healthy_while_starting_and_after_syncs(
    health: ProxierHealth, clock: Clock, healthz: str
) -> None:
    status, headers, body = get(healthz + "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Healthy: lastUpdated reads "now", as kube-proxy reports it.
    now = go_time(clock.now)
    assert body == {
        "lastUpdated": now,
        "currentTime": now,
        "lastSynced": None,  # nftproxy's own fields: never synced, nothing waits
        "pendingSince": None,
        "nodeEligible": True,
    }
    health.queued_update()
    queued = clock.now
    clock.now += 59.9
    status, _, body = get(healthz + "/healthz")
    assert status == 200  # pending, not late yet
    assert (body["lastSynced"], body["pendingSince"]) == (None, rfc3339(queued))
    health.updated()
    _, _, body = get(healthz + "/healthz")
    assert (body["lastSynced"], body["pendingSince"]) == (rfc3339(clock.now), None)
    clock.now += 600  # nothing pending: healthy however long ago the last sync was
    assert get(healthz + "/healthz")[0] == 200
    assert get(healthz + "/livez")[0] == 200


def test_a_change_pending_for_the_timeout_is_unhealthy(
    health: ProxierHealth, clock: Clock, healthz: str
) -> None:
    health.updated()
    synced = clock.now
    clock.now += 5
    health.queued_update()
    clock.now += 30
    health.queued_update()  # the oldest pending change counts
    clock.now += 30
    status, _, body = get(healthz + "/healthz")
    assert status == 503
    assert body == {
        "lastUpdated": go_time(synced),
        "currentTime": go_time(clock.now),
        "lastSynced": rfc3339(synced),
        "pendingSince": rfc3339(synced + 5),
        "nodeEligible": True,
    }
    status, _, body = get(healthz + "/livez")
    assert status == 503
    assert body["lastUpdated"] == go_time(synced)
    health.updated()
    assert get(healthz + "/healthz")[0] == 200


def test_never_synced_reports_go_zero_time(
    health: ProxierHealth, clock: Clock, healthz: str
) -> None:
    health.queued_update()
    clock.now += 60
    status, _, body = get(healthz + "/livez")
    assert (status, body["lastUpdated"]) == (503, "0001-01-01 00:00:00 +0000 UTC")


def test_node_eligibility_affects_healthz_only(health: ProxierHealth, healthz: str) -> None:
    health.sync_node(
        {
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
        }
    )
    status, _, body = get(healthz + "/healthz")
    assert (status, body["nodeEligible"]) == (503, False)
    assert get(healthz + "/livez")[0] == 200
    health.sync_node({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "other"}]}})
    assert get(healthz + "/healthz")[0] == 200
    health.sync_node({"metadata": {"name": "n", "deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert get(healthz + "/healthz")[0] == 503
    health.sync_node(None)
    assert get(healthz + "/healthz")[0] == 503


def test_other_paths_are_not_found(healthz: str) -> None:
    assert get(healthz + "/metrics")[0] == 404
    assert get(healthz + "/healthz?verbose=1")[0] == 200


def test_attach_marks_updated_after_each_sync(health: ProxierHealth, clock: Clock) -> None:
    proxier: Any = SimpleNamespace(stats=SyncStats())
    health.attach(proxier)
    health.queued_update()
    clock.now += 100
    assert not health.is_healthy()
    for listener in proxier.stats.listeners:
        listener(SyncResult("incremental", 1, 0.01, 1))
    assert not health.is_healthy()  # the sync loop has not turned for 100 s either
    for turned in proxier.stats.tick_listeners:
        turned()
    assert health.is_healthy()


def test_go_time_layout() -> None:
    assert go_time(0) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time(1.5) == "1970-01-01 00:00:01.5 +0000 UTC"
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0:10256", ("0.0.0.0", 10256)),
        ("127.0.0.1", ("127.0.0.1", 1)),
        ("[::]:10256", ("::", 10256)),
        ("::1", ("::1", 1)),
        ("[::1]", ("::1", 1)),
    ],
)
def test_split_host_port(text: str, want: tuple[str, int]) -> None:
    assert split_host_port("x", text, 1) == want


@pytest.mark.parametrize("text", ["localhost:1", "1.2.3.4:x", "1.2.3.4:70000", "[::1", "[::1]x"])
def test_split_host_port_errors(text: str) -> None:
    with pytest.raises(BindAddressError, match=r"^x: "):
        split_host_port("x", text, 1)


# --- healthCheckNodePort ------------------------------------------------------------------


WEB = ServiceName("shop", "web")
API = ServiceName("shop", "api")


@pytest.fixture
def hc(health: ProxierHealth) -> Iterator[HealthCheckServers]:
    servers = HealthCheckServers("127.0.0.1", health)
    yield servers
    servers.close()


def test_health_check_node_ports_open_answer_and_close(hc: HealthCheckServers) -> None:
    p1, p2 = free_ports(2)
    hc.sync({p1: (WEB, 2), p2: (API, 0)})
    assert hc.ports == {p1, p2}
    status, headers, body = get(f"http://127.0.0.1:{p1}/")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == {
        "service": {"namespace": "shop", "name": "web"},
        "localEndpoints": 2,
        "serviceProxyHealthy": True,
    }
    status, _, body = get(f"http://127.0.0.1:{p2}/any/path")
    assert (status, body["localEndpoints"], body["service"]["name"]) == (503, 0, "api")

    hc.sync({p1: (WEB, 0)})  # counts change in place; api's Service is gone
    assert hc.ports == {p1}
    assert get(f"http://127.0.0.1:{p1}/")[0] == 503
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"http://127.0.0.1:{p2}/", timeout=5)
    hc.sync({})
    assert hc.ports == frozenset()


def test_unhealthy_proxy_fails_every_service(
    hc: HealthCheckServers, health: ProxierHealth, clock: Clock
) -> None:
    [port] = free_ports(1)
    hc.sync({port: (WEB, 3)})
    health.queued_update()
    clock.now += 61
    status, _, body = get(f"http://127.0.0.1:{port}/")
    assert (status, body["localEndpoints"], body["serviceProxyHealthy"]) == (503, 3, False)


def test_a_port_in_use_is_reported_and_retried(hc: HealthCheckServers) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        hc.sync({port: (WEB, 1)})
        assert hc.ports == frozenset()
        assert port in hc.errors
    finally:
        blocker.close()
    hc.sync({port: (WEB, 1)})
    assert hc.ports == {port} and hc.errors == {}
    assert get(f"http://127.0.0.1:{port}/")[0] == 200


def test_health_check_ports_from_the_model() -> None:
    tcp = ServicePort("http", Protocol.TCP, 80, node_port=30080)
    web = Service(WEB, (tcp,), external_policy_local=True, health_check_node_port=31000)
    api = Service(API, (tcp,))
    slices = {
        WEB: [
            EndpointSlice(
                "shop",
                "web-a",
                "web",
                4,
                (),
                (
                    Endpoint("10.0.0.1", node_name="me"),
                    Endpoint("10.0.0.2", node_name="me", ready=False),
                    Endpoint("10.0.0.3", node_name="other"),
                ),
            ),
            EndpointSlice("shop", "web-b", "web", 4, (), (Endpoint("10.0.0.1", node_name="me"),)),
        ]
    }
    got = health_check_ports(
        [web, api], lambda sid: local_ready_endpoints(slices.get(sid, []), "me")
    )
    assert got == {31000: (WEB, 1)}


def test_a_loop_that_stops_turning_makes_the_proxy_unhealthy(
    health: ProxierHealth, clock: Clock, healthz: str
) -> None:
    turned = health.watch("manifest scan")
    clock.now += 59
    turned()
    clock.now += 59
    assert get(f"{healthz}/healthz")[0] == 200
    clock.now += 2  # 61 s since the last turn: stuck (a FIFO read, a hung netlink call)
    assert health.stuck() == ["manifest scan"]
    assert get(f"{healthz}/healthz")[0] == 503
    assert get(f"{healthz}/livez")[0] == 503
    turned()
    assert get(f"{healthz}/healthz")[0] == 200


class FailingBackend(FakeBackend):
    """A fake kernel that refuses every commit: a failure loop on demand."""

    def apply(self, tx: Any, sets: Any = None, *, generation: int | None = None) -> bool:
        raise NftError("refused (a fake failure)")


def test_the_listener_of_a_deleted_service_closes_even_while_syncs_fail(
    hc: HealthCheckServers,
) -> None:
    from nftproxy.config import NodeConfig
    from nftproxy.proxier import Proxier

    [port] = free_ports(1)
    tcp = ServicePort("http", Protocol.TCP, 80, node_port=30080)
    web = Service(WEB, (tcp,), external_policy_local=True, health_check_node_port=port)
    proxier = Proxier(FailingBackend(), NodeConfig(node_name="node-a"))
    hc.follow(proxier)
    proxier.replace_all({WEB: web}, {})
    with pytest.raises(NftError):
        proxier.sync()
    assert hc.ports == {port}
    proxier.replace_all({}, {})
    with pytest.raises(NftError):
        proxier.sync()
    assert hc.ports == frozenset()


def test_an_idle_connection_is_closed_so_its_thread_ends(
    healthz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nftproxy.health import JSONHandler

    monkeypatch.setattr(JSONHandler, "timeout", 0.3)
    port = int(healthz.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"}" not in answer:
            answer += conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        # Kept alive, then idle: the server closes it (recv returns b"").
        conn.settimeout(5)
        assert conn.recv(4096) == b""


def test_health_check_node_ports_listen_where_node_ports_are_served() -> None:
    from nftproxy.config import node_config
    from nftproxy.health import health_check_hosts

    primary = node_config(node_ips=["192.168.0.1", "fd00::1"], nodeport_addresses=["primary"])
    assert health_check_hosts(primary) == ("192.168.0.1", "fd00::1")
    v4_only = node_config(node_ips=["192.168.0.1"], nodeport_addresses=["primary"])
    assert health_check_hosts(v4_only) == ("192.168.0.1",)
    unknown = node_config(nodeport_addresses=["primary"])
    assert health_check_hosts(unknown) == ("0.0.0.0",)
    everywhere = node_config(node_ips=["192.168.0.1"], nodeport_addresses=["0.0.0.0/0"])
    assert health_check_hosts(everywhere) == ("0.0.0.0",)
