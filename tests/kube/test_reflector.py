"""The reflectors against a real kube-apiserver (see apiserver.py): list, watch, pagination,
410 Gone and re-list, apiserver restarts, RBAC errors, and invalid objects; canned responses
only for input the apiserver refuses to store."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nftproxy.daemon import ProxierSink
from nftproxy.kube.client import Client, ClusterConfig, Forbidden, load_kubeconfig
from nftproxy.kube.reflector import (
    EndpointSliceResource,
    KubeWatcher,
    NodeInfo,
    NodeResource,
    RawNode,
    Reflector,
    ServiceResource,
)
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.model import Service, ServiceName
from tests.support.control_plane import start_control_plane
from tests.support.recording import RecordingProxier, RecordingSink, wait_for

# Fast retries so that reconnects fit in a test's budget.
OPTIONS: dict[str, Any] = {"backoff_initial": 0.2, "backoff_max": 1.0}


def ok(cp: ControlPlane, method: str, path: str, body: Any = None, want: int = 200) -> Any:
    status, got = cp.request(method, path, body)
    assert status == want, f"{method} {path}: {status} {got}"
    return got


def services_path(ns: str) -> str:
    return f"/api/v1/namespaces/{ns}/services"


def slices_path(ns: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            **spec,
        },
    }


def endpoint_slice(name: str, service_name: str, *ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def admin_client(cp: ControlPlane) -> Client:
    return Client(ClusterConfig(server=cp.url, token=cp.admin_token, insecure=True), timeout=10)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with start_control_plane(tmp_path_factory.mktemp("cp")) as plane:
        yield plane


@pytest.fixture
def ns(cp: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": name}}, want=201)
    return name


@pytest.fixture
def watcher_factory() -> Iterator[Callable[..., KubeWatcher]]:
    started: list[KubeWatcher] = []

    def make(client: Client, sink: Any, **kwargs: Any) -> KubeWatcher:
        w = KubeWatcher(client, sink, **{**OPTIONS, **kwargs})
        started.append(w)
        w.start()
        return w

    yield make
    for w in started:
        w.stop(timeout=10)
        for r in w.reflectors:
            assert not r.running, f"reflector {r.name} still running"


def in_ns(ns: str, services: dict[ServiceName, Service]) -> set[str]:
    return {sid.name for sid in services if sid.namespace == ns}


def test_list_watch_add_update_delete(
    cp: ControlPlane, ns: str, watcher_factory: Callable[..., KubeWatcher], tmp_path: Path
) -> None:
    ok(cp, "POST", services_path(ns), service("before"), want=201)
    sink = RecordingSink()
    client = Client(load_kubeconfig(cp.kubeconfig(tmp_path / "kc", cp.admin_token)))
    w = watcher_factory(client, sink)
    assert w.wait_synced(15)
    assert in_ns(ns, sink.service_replaces[-1]) == {"before"}

    ok(cp, "POST", services_path(ns), service("web"), want=201)
    ok(cp, "POST", slices_path(ns), endpoint_slice("web-1", "web", "10.244.1.5"), want=201)
    sid, key = ServiceName(ns, "web"), (ns, "web-1")
    wait_for("the Service", lambda: sid in sink.services)
    wait_for("the slice", lambda: key in sink.slices)
    assert sink.services[sid].ports[0].port == 80
    assert [e.ip for e in sink.slices[key].endpoints] == ["10.244.1.5"]

    current = ok(cp, "GET", f"{slices_path(ns)}/web-1")
    current["endpoints"].append({"addresses": ["10.244.2.7"], "conditions": {"ready": False}})
    ok(cp, "PUT", f"{slices_path(ns)}/web-1", current)
    wait_for("the slice update", lambda: len(sink.slices[key].endpoints) == 2)
    assert [e.ready for e in sink.slices[key].endpoints] == [True, False]

    ok(cp, "DELETE", f"{slices_path(ns)}/web-1")
    ok(cp, "DELETE", f"{services_path(ns)}/web")
    wait_for("the deletions", lambda: key not in sink.slices and sid not in sink.services)
    assert ("slice", key, None) in sink.updates
    assert ("service", sid, None) in sink.updates

    stats = w.services.stats
    assert stats.lists == 1 and stats.relists == 0
    assert stats.events.get("ADDED", 0) >= 1 and stats.events.get("DELETED", 0) >= 1
    assert w.slices.stats.events.get("MODIFIED", 0) >= 1


def test_paginated_list(
    cp: ControlPlane, ns: str, watcher_factory: Callable[..., KubeWatcher]
) -> None:
    count = 1200
    names = [f"s-{i:04d}" for i in range(count)]

    def create(name: str) -> None:
        ok(cp, "POST", slices_path(ns), endpoint_slice(name, "big", "10.1.0.1"), want=201)

    deadline = time.monotonic() + 25
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(create, names):
            assert time.monotonic() < deadline, "creating slices took too long"

    sink = RecordingSink()
    w = watcher_factory(admin_client(cp), sink)
    assert w.wait_synced(15)
    [first] = sink.slice_replaces
    assert {name for (n, name) in first if n == ns} == set(names)
    assert w.slices.stats.list_requests >= 3
    assert w.slices.stats.lists == 1


def test_gone_after_compaction_relists(tmp_path: Path) -> None:
    # Without the watch cache the watch goes to etcd, where compaction expires history.
    with start_control_plane(tmp_path, watch_cache=False) as cp:
        ns = "gone"
        ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}}, want=201)
        for name in ("keep", "doomed"):
            ok(cp, "POST", services_path(ns), service(name), want=201)
        sink = RecordingSink()
        r = Reflector(admin_client(cp), ServiceResource(sink), **OPTIONS)
        r.start()
        try:
            assert r.synced.wait(15)
            assert in_ns(ns, sink.services) == {"keep", "doomed"}
            wait_for("the watch", lambda: r.stats.watches >= 1)
        finally:
            r.stop()
        old_version = r.resource_version
        assert old_version

        # While the reflector is paused: a deletion, more history, then compaction.
        ok(cp, "DELETE", f"{services_path(ns)}/doomed")
        ok(cp, "POST", services_path(ns), service("later"), want=201)
        assert cp.compact() > int(old_version)

        r.start()  # resumes from old_version, which is now gone
        try:
            wait_for("the re-list", lambda: r.stats.relists == 1 and r.stats.lists == 2)
            assert in_ns(ns, sink.service_replaces[-1]) == {"keep", "later"}
            assert in_ns(ns, sink.services) == {"keep", "later"}
            assert r.resource_version != old_version
            # And the new watch works.
            ok(cp, "POST", services_path(ns), service("after"), want=201)
            wait_for("a later event", lambda: ServiceName(ns, "after") in sink.services)
        finally:
            r.stop()
        assert not r.running

        # A continue token that expires between pages restarts the list from the top.
        class CompactingClient(Client):
            compacted = False

            def get(self, path: str, params: Any = None, *, timeout: float | None = None) -> bytes:
                if params and params.get("continue") and not self.compacted:
                    self.compacted = True
                    ok(cp, "POST", services_path(ns), service("mid-list"), want=201)
                    cp.compact()
                return super().get(path, params, timeout=timeout)

        config = ClusterConfig(server=cp.url, token=cp.admin_token, insecure=True)
        sink2 = RecordingSink()
        r2 = Reflector(CompactingClient(config), ServiceResource(sink2), page_size=1, **OPTIONS)
        r2.start()
        try:
            assert r2.synced.wait(15)
            assert r2.stats.list_restarts == 1 and r2.stats.lists == 1
            assert in_ns(ns, sink2.service_replaces[0]) == {"keep", "later", "after", "mid-list"}
        finally:
            r2.stop()


def test_apiserver_restart_reconnects(
    cp: ControlPlane, ns: str, watcher_factory: Callable[..., KubeWatcher]
) -> None:
    sink = RecordingSink()
    w = watcher_factory(admin_client(cp), sink)
    assert w.wait_synced(15)
    wait_for("the watches", lambda: w.services.stats.watches >= 1 and w.slices.stats.watches >= 1)

    cp.restart_apiserver()
    ok(cp, "POST", services_path(ns), service("after-restart"), want=201)
    ok(cp, "POST", slices_path(ns), endpoint_slice("ar-1", "after-restart", "10.9.9.9"), want=201)
    sid = ServiceName(ns, "after-restart")
    wait_for("events after the restart", lambda: sid in sink.services, timeout=20)
    wait_for("slice after the restart", lambda: (ns, "ar-1") in sink.slices, timeout=20)
    assert w.services.stats.watches >= 2
    assert w.services.stats.failures >= 1 or w.services.stats.relists >= 1


def test_forbidden_is_reported_with_backoff(
    cp: ControlPlane, watcher_factory: Callable[..., KubeWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(ClusterConfig(server=cp.url, token=cp.user_token, insecure=True), timeout=10)
    sink = RecordingSink()
    w = watcher_factory(client, sink, backoff_initial=0.5, backoff_max=30.0)
    wait_for("the error", lambda: isinstance(w.services.last_error, Forbidden))
    time.sleep(2.0)
    err = w.services.last_error
    assert isinstance(err, Forbidden)
    assert err.status == 403
    assert 'cannot list resource "services"' in str(err)
    assert 'User "nftproxy"' in str(err)
    slice_err = w.slices.last_error
    assert isinstance(slice_err, Forbidden)
    assert '"endpointslices"' in str(slice_err)
    # Backoff: 0.5 s doubling, so about four attempts in ~2.5 s, not hundreds.
    assert 2 <= w.services.stats.failures <= 6
    assert not w.services.synced.is_set()
    assert not sink.service_replaces
    assert any('cannot list resource "services"' in r.getMessage() for r in caplog.records)


def test_invalid_service_does_not_disturb_others(
    cp: ControlPlane, ns: str, watcher_factory: Callable[..., KubeWatcher]
) -> None:
    ok(cp, "POST", services_path(ns), service("good-1"), want=201)
    # The apiserver accepts any IP in externalIPs; nftproxy rejects the wrong family.
    bad = ok(cp, "POST", services_path(ns), service("bad", externalIPs=["2001:db8::5"]), want=201)
    assert bad["spec"]["ipFamilies"] == ["IPv4"]
    ok(cp, "POST", services_path(ns), service("good-2"), want=201)

    sink = RecordingSink()
    w = watcher_factory(admin_client(cp), sink)
    assert w.wait_synced(15)
    assert in_ns(ns, sink.service_replaces[0]) == {"good-1", "good-2"}
    assert w.services.stats.invalid_objects >= 1

    # A watch event with an invalid object also leaves the others alone, and removes it.
    good = ok(cp, "GET", f"{services_path(ns)}/good-1")
    good["spec"]["externalIPs"] = ["2001:db8::6"]
    ok(cp, "PUT", f"{services_path(ns)}/good-1", good)
    ok(cp, "POST", services_path(ns), service("good-3"), want=201)
    wait_for("good-3", lambda: ServiceName(ns, "good-3") in sink.services)
    assert in_ns(ns, sink.services) == {"good-2", "good-3"}

    # Fixing the bad one brings it in.
    bad = ok(cp, "GET", f"{services_path(ns)}/bad")
    bad["spec"]["externalIPs"] = ["192.0.2.10"]
    ok(cp, "PUT", f"{services_path(ns)}/bad", bad)
    wait_for("the fixed Service", lambda: ServiceName(ns, "bad") in sink.services)
    assert sink.services[ServiceName(ns, "bad")].external_ips == ("192.0.2.10",)


def test_node_and_proxier_sink(
    cp: ControlPlane, ns: str, watcher_factory: Callable[..., KubeWatcher]
) -> None:
    node_name = f"node-{ns}"
    seen: list[NodeInfo | None] = []
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
    }
    ok(cp, "POST", "/api/v1/nodes", node, want=201)
    status = ok(cp, "GET", f"/api/v1/nodes/{node_name}")
    status["status"] = {
        "addresses": [
            {"type": "InternalIP", "address": "10.0.0.7"},
            {"type": "ExternalIP", "address": "203.0.113.7"},
            {"type": "Hostname", "address": node_name},
        ]
    }
    ok(cp, "PUT", f"/api/v1/nodes/{node_name}/status", status)

    proxier = RecordingProxier()
    sink = ProxierSink(proxier)  # type: ignore[arg-type]
    ok(cp, "POST", services_path(ns), service("web"), want=201)
    ok(cp, "POST", slices_path(ns), endpoint_slice("web-1", "web", "10.244.0.9"), want=201)
    w = watcher_factory(admin_client(cp), sink, node_name=node_name, on_node=seen.append)
    assert w.wait_synced(15)
    wait_for("the node", lambda: bool(seen))
    assert seen[0] == NodeInfo(node_name, "zone-a", ("10.0.0.7",), ("203.0.113.7",))
    wait_for("replace_all", lambda: bool(proxier.replaced))
    services, slices = proxier.replaced[-1]
    assert ServiceName(ns, "web") in services and (ns, "web-1") in slices

    ok(cp, "DELETE", f"{slices_path(ns)}/web-1")
    wait_for("update_slice", lambda: ("slice", (ns, "web-1"), None) in proxier.updates)

    current = ok(cp, "GET", f"/api/v1/nodes/{node_name}")
    current["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b"
    ok(cp, "PUT", f"/api/v1/nodes/{node_name}", current)
    wait_for("the zone change", lambda: seen[-1] is not None and seen[-1].zone == "zone-b")
    ok(cp, "DELETE", f"/api/v1/nodes/{node_name}")
    wait_for("the node deletion", lambda: seen[-1] is None)


def test_node_addresses_are_read_as_kube_proxy_reads_them() -> None:
    # Leading zeros are decimal (ParseIPSloppy); what does not parse is skipped.
    listed = [
        {"type": "InternalIP", "address": "010.000.000.007"},
        {"type": "InternalIP", "address": "not-an-ip"},
        {"type": "ExternalIP", "address": "2001:DB8::0007"},
        {"type": "Hostname", "address": "node-a"},
    ]
    raw = msgspec.convert(
        {"metadata": {"name": "node-a"}, "status": {"addresses": listed}}, RawNode
    )
    info = NodeResource("node-a", lambda _: None).convert(raw, lambda _: None)
    assert info == NodeInfo("node-a", None, ("10.0.0.7",), ("2001:db8::7",))


# --- canned responses -------------------------------------------------------------------------
#
# The apiserver validates EndpointSlice addresses, so a slice with a bad endpoint cannot be
# created through it; API servers without that validation, or objects stored before it, can
# still send one. These tests serve such responses from a canned client instead.


def slice_json(version: str, *ips: str) -> dict[str, Any]:
    obj = endpoint_slice("web-1", "web", *ips)
    obj["metadata"] |= {"namespace": "shop", "resourceVersion": version}
    return obj


class CannedWatch:
    """A watch that sends its lines, then stays open until closed, like a quiet server."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self.lines
        self.closed.wait()

    def close(self) -> None:
        self.closed.set()


class CannedClient:
    """Answers the first LIST with `listed` and the first WATCH with `events`."""

    def __init__(self, listed: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.listed = listed
        self.events = [json.dumps(e).encode() for e in events]

    def get(self, path: str, params: Any = None, *, timeout: float | None = None) -> bytes:
        return json.dumps({"metadata": {"resourceVersion": "10"}, "items": self.listed}).encode()

    def watch(self, path: str, params: Any = None, *, idle_timeout: float = 0) -> CannedWatch:
        events, self.events = self.events, []
        return CannedWatch(events)


def test_a_slice_with_bad_endpoints_keeps_its_good_ones_and_logs_each_bad_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listed = slice_json("7", "10.0.0.1", "10.0.0.999", "10.0.0.3")
    modified = slice_json("11", "fd00::1", "10.0.0.4")
    client = CannedClient([listed], [{"type": "MODIFIED", "object": modified}])
    sink = RecordingSink()
    reflector = Reflector(client, EndpointSliceResource(sink), **OPTIONS)  # type: ignore[arg-type]
    reflector.start()
    try:
        assert reflector.synced.wait(15)
        assert [e.ip for e in sink.slice_replaces[0][("shop", "web-1")].endpoints] == [
            "10.0.0.1",
            "10.0.0.3",
        ]
        wait_for("the watch event", lambda: bool(sink.updates))
        assert [e.ip for e in sink.slices[("shop", "web-1")].endpoints] == ["10.0.0.4"]
    finally:
        reflector.stop()
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        'EndpointSlice shop/web-1: endpoints[1].addresses[0]: "10.0.0.999" is not a valid IP' in w
        for w in warnings
    ), warnings
    assert any(
        'EndpointSlice shop/web-1: endpoints[0].addresses[0]: "fd00::1" is IPv6' in w
        for w in warnings
    ), warnings
    assert reflector.stats.invalid_parts == 2
    assert reflector.stats.invalid_objects == 0
