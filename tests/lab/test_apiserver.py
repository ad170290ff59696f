"""The real control plane (nftproxy.lab.apiserver): objects in and out over REST, RBAC,
an apiserver restart, and 410 Gone for a watch from before an etcd compaction."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import yaml

from nftproxy.kube.objects import (
    RawEndpointSlice,
    RawService,
    Skip,
    from_builtins,
    to_service,
    to_slice,
)
from nftproxy.lab.apiserver import BinariesMissing, ControlPlane, find_binaries
from tests.support.control_plane import start_control_plane

NS = "nftproxy-it"
SERVICES = f"/api/v1/namespaces/{NS}/services"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {
        "type": "ClusterIP",
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    },
}
SLICE = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {"name": "web-abc12", "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
}


def ok(cp: ControlPlane, method: str, path: str, body: Any = None, want: int = 200) -> Any:
    status, got = cp.request(method, path, body)
    assert status == want, f"{method} {path}: {status} {got}"
    return got


def first_watch_event(cp: ControlPlane, path: str, rv: str) -> dict[str, Any]:
    """The first event of a watch from rv; an HTTP error status is turned into an ERROR."""
    url = f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=5"
    try:
        with cp.open_stream(url, timeout=10) as resp:
            line = resp.readline()
    except urllib.error.HTTPError as e:
        with e:
            return {"type": "ERROR", "object": json.loads(e.read())}
    assert line, f"watch from {rv} ended without an event"
    event: dict[str, Any] = json.loads(line)
    return event


def names(listing: dict[str, Any]) -> list[str]:
    return sorted(item["metadata"]["name"] for item in listing["items"])


def test_control_plane(tmp_path: Path) -> None:
    # Watches go to etcd, so that the compaction (not the watch cache) decides the 410.
    with start_control_plane(tmp_path, watch_cache=False) as cp:
        ns = ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, want=201)
        old_rv = ns["metadata"]["resourceVersion"]
        svc = ok(cp, "POST", SERVICES, SERVICE, want=201)
        assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network(
            "10.96.0.0/12"
        )
        ok(cp, "POST", SLICES, SLICE, want=201)

        services, slices = ok(cp, "GET", SERVICES), ok(cp, "GET", SLICES)
        assert names(services) == ["web"]
        assert names(slices) == ["web-abc12"]
        [listed_slice] = slices["items"]
        assert listed_slice["endpoints"][0]["addresses"] == ["10.244.1.5"]
        # What the real apiserver returns goes through nftproxy's own decoding.
        assert not isinstance(to_service(from_builtins(services["items"][0], RawService)), Skip)
        assert not isinstance(to_slice(from_builtins(listed_slice, RawEndpointSlice)), Skip)

        # The test user is authenticated but RBAC grants it nothing.
        for path in (SERVICES, "/api/v1/services"):
            status, body = cp.request("GET", path, token=cp.user_token)
            assert status == 403, body
            assert body["reason"] == "Forbidden"
            assert 'User "nftproxy"' in body["message"]

        config = yaml.safe_load(cp.kubeconfig(tmp_path / "kubeconfig", cp.user_token).read_text())
        assert config["clusters"][0]["cluster"]["server"] == cp.url
        assert config["users"][0]["user"]["token"] == cp.user_token

        cp.restart_apiserver()
        again = ok(cp, "GET", SERVICES)
        assert [i["metadata"]["uid"] for i in again["items"]] == [svc["metadata"]["uid"]]
        assert names(ok(cp, "GET", SLICES)) == ["web-abc12"]

        # Before compaction the old resourceVersion replays history...
        event = first_watch_event(cp, SERVICES, old_rv)
        assert event["type"] == "ADDED", event
        assert event["object"]["metadata"]["name"] == "web"
        # ...after it, the watch is refused with 410 Gone (reason Expired).
        assert cp.compact() > int(old_rv) + 1
        event = first_watch_event(cp, SERVICES, old_rv)
        assert event["type"] == "ERROR", event
        assert event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"


def test_missing_binaries_name_what_to_build_and_skip_a_test_unless_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NFTPROXY_K8S_CACHE", str(tmp_path))  # nothing built there
    with pytest.raises(BinariesMissing, match=r"hack/k8s/build\.sh.*kube-apiserver, etcd"):
        find_binaries()
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="kube-apiserver"):
        start_control_plane(tmp_path / "cp")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BinariesMissing):
        start_control_plane(tmp_path / "cp")
