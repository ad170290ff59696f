"""The network panel's computation (nftproxy.dashboard.network): for API objects as the
apiserver returns them, each way into a Service and where it leads on each node, checked
against what `nftproxy explain` answers for the same objects; and the sync state a node's
health endpoint gives."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from nftproxy.dashboard.network import (
    NodeHealth,
    NodeInfo,
    last_change,
    node_health,
    node_infos,
    preview,
    service_networks,
    sync_state,
)
from nftproxy.health import ProxierHealth, serve_healthz


def service(name: str, ip: str, *, node_port: int | None = None, **spec: Any) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    if node_port:
        port["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": "apps",
            "name": name,
            "creationTimestamp": "2026-12-07T03:00:00Z",
            "managedFields": [{"manager": "helm", "time": "2026-12-07T03:10:00Z"}],
        },
        "spec": {
            "type": "NodePort" if node_port else "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [port],
            **spec,
        },
    }


def endpoint_slice(owner: str, endpoints: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "apps",
            "name": f"{owner}-abcde",
            "labels": {"kubernetes.io/service-name": owner},
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-07T03:20:00Z"
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
            for ip, node in endpoints
        ],
    }


NODES = [
    {
        "metadata": {"name": "node-b", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.12"}]},
    },
    {
        "metadata": {"name": "node-a"},
        "spec": {"podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "node-a"},
                {"type": "InternalIP", "address": "192.0.2.11"},
            ]
        },
    },
]
CIDR = ["10.244.0.0/16"]


def explained(objects: list[dict[str, Any]], tmp: Path, to: str, *flags: str) -> list[Any]:
    """What `nftproxy explain --json` answers for these objects."""
    file = tmp / "objects.json"
    file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    out = subprocess.run(
        [sys.executable, "-m", "nftproxy", "explain", "--json", "--to", to, *flags, str(file)],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(out.stdout)["results"]
    return sorted(
        (r["endpoint"] or "", r["verdict"], r["masquerade"], r["probability"]) for r in results
    )


def shares(path: Any) -> list[Any]:
    return sorted((s.endpoint, s.verdict, s.masquerade, float(s.probability)) for s in path.shares)


def test_every_way_in_matches_nftproxy_explain_on_each_node(tmp_path: Path) -> None:
    web = service("web", "10.96.0.10", node_port=30080, externalTrafficPolicy="Local")
    slices = [
        endpoint_slice(
            "web", [("10.244.0.5", "node-a"), ("10.244.1.6", "node-b"), ("10.244.1.7", "node-b")]
        )
    ]
    nodes = node_infos(NODES)
    assert [n.name for n in nodes] == ["node-a", "node-b"]
    assert nodes[0].addresses == ("192.0.2.11",) and nodes[1].zone == "z1"
    [net] = service_networks([web], slices, nodes, CIDR)
    assert (net.kind, net.endpoints) == ("NodePort", 3)
    assert net.policies == ("external traffic: Local",)
    assert net.changed == datetime(2026, 12, 7, 3, 20, tzinfo=UTC)
    by_entry: dict[str, list[Any]] = {}
    for path in net.paths:
        by_entry.setdefault(path.entry, []).append(path)
    # From a pod, the ClusterIP spreads evenly over all three on both nodes: one answer.
    [cluster] = by_entry["ClusterIP 10.96.0.10:80/TCP"]
    assert cluster.nodes == ("node-a", "node-b")
    assert [s.probability for s in cluster.shares] == [Fraction(1, 3)] * 3
    for node in ("node-a", "node-b"):
        cidr_flags = ["--cluster-cidr", CIDR[0], "--node-name", node]
        assert shares(cluster) == explained(
            [web, *slices],
            tmp_path,
            "10.96.0.10:80/tcp",
            *cidr_flags,
            "--from",
            "10.244.0.2" if node == "node-a" else "10.244.1.2",
        )
    # The NodePort with policy Local: each node only to its own endpoints, not masqueraded.
    nodeports = {p.nodes: p for p in by_entry["NodePort 30080/TCP"]}
    assert set(nodeports) == {("node-a",), ("node-b",)}
    for node, ip, count in (("node-a", "192.0.2.11", 1), ("node-b", "192.0.2.12", 2)):
        path = nodeports[(node,)]
        assert len(path.shares) == count and not any(s.masquerade for s in path.shares)
        assert shares(path) == explained(
            [web, *slices],
            tmp_path,
            f"{ip}:30080/tcp",
            "--node-name",
            node,
            "--node-ip",
            ip,
            "--cluster-cidr",
            CIDR[0],
            "--via",
            "nodeport",
            "--from",
            "203.0.113.10",
        )


def test_a_service_without_endpoints_is_refused_and_a_bad_one_is_named() -> None:
    empty = service("empty", "10.96.0.11")
    broken = service("broken", "not-an-ip")
    [bad, none] = service_networks([broken, empty], [], [], CIDR)
    assert bad.name == "broken" and bad.problems and "clusterIP" in bad.problems[0]
    assert bad.paths == ()
    [path] = none.paths
    assert path.nodes == ()  # no node known: one answer stands for any node
    [share] = path.shares
    assert (share.verdict, share.endpoint, share.probability) == ("reject", "", 1)


def test_the_last_change_is_the_latest_write_of_the_service_or_its_slices() -> None:
    web = service("web", "10.96.0.10")
    assert last_change([web]) == datetime(2026, 12, 7, 3, 10, tzinfo=UTC)
    later = endpoint_slice("web", [])
    assert last_change([web, later]) == datetime(2026, 12, 7, 3, 20, tzinfo=UTC)
    assert last_change([]) is None


def test_a_node_has_synced_when_its_proxy_last_synced_after_the_change() -> None:
    """The real health server of `nftproxy run`, asked over HTTP on loopback."""
    health = ProxierHealth()
    with serve_healthz(health, "127.0.0.1:0") as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        node = NodeInfo("node-a", ("127.0.0.1",))
        before = datetime.now(UTC) - timedelta(seconds=1)
        health.queued_update()
        [waiting] = node_health([node], url)
        assert waiting.healthy and waiting.last_synced is None and waiting.pending_since
        assert sync_state(waiting, before).synced is None  # never synced: cannot say
        health.updated()
        [done] = node_health([node], url)
        assert sync_state(done, before).synced is True
        later = datetime.now(UTC) + timedelta(seconds=5)
        state = sync_state(done, later)
        assert (state.synced, state.message) == (False, "not synced since the last change")
    [gone] = node_health([node], url, timeout=0.5)  # the server is closed now
    assert gone.healthy is None and sync_state(gone, before).message.startswith("no answer")


def test_a_proxy_that_does_not_say_when_it_synced_is_only_healthy() -> None:
    kube_proxy = NodeHealth("n", True, None, None, "healthy")
    state = sync_state(kube_proxy, datetime.now(UTC))
    assert state.synced is None and "does not say when it synced" in state.message


def test_a_node_without_address_is_not_asked() -> None:
    [answer] = node_health([NodeInfo("n")], "http://{address}:1/healthz", timeout=0.2)
    assert (answer.healthy, answer.message) == (None, "the node has no InternalIP")


def test_a_preview_names_no_service_the_user_cannot_see_and_takes_odd_values() -> None:
    rendered = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  externalIPs: [192.0.2.7, {not: an address}]
  ports: [{port: 80, nodePort: 30555}, {port: x, nodePort: "\u00b2"}, not-a-port]
"""
    elsewhere = service("hidden", "10.96.0.20", node_port=30555)
    elsewhere["metadata"]["namespace"] = "secret-ns"
    neighbour = service("neighbour", "10.96.0.21", externalIPs=["192.0.2.7"])
    changes, errors = preview(rendered, "", "apps", [neighbour], [elsewhere, neighbour], [], [])
    assert errors == []
    [web] = changes
    assert web.change == "new"
    assert set(web.conflicts) == {
        "NodePort 30555/TCP is another Service's: the cluster will refuse it",
        "external IP 192.0.2.7:80/TCP is also apps/neighbour's: nodes send its traffic to one "
        "of the two only",
    }
    assert not any("secret-ns" in line or "hidden" in line for line in web.notes + web.conflicts)
    # An upgrade that drops a Service the user cannot see frees nothing they are told of.
    changes, _ = preview(
        "", rendered.replace("name: web", "name: hidden"), "secret-ns", [], [elsewhere], [], []
    )
    [gone] = changes
    assert gone.change == "removed" and gone.notes == ("its rules go from every node",)
