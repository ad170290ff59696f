"""deploy/: every manifest accepted by a real apiserver (server-side dry run, strict field
validation), the ClusterRole exactly what the proxy needs, the ConfigMap's config clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nftproxy.lab.apiserver import ControlPlane
from nftproxy.proxyconfig import parse
from tests.support.control_plane import start_control_plane

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")

# kind -> (collection path, namespaced)
COLLECTIONS = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in documents() if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with start_control_plane(tmp_path_factory.mktemp("cp")) as plane:
        yield plane


def collection(doc: dict[str, Any]) -> str:
    prefix, plural, namespaced = COLLECTIONS[doc["kind"]]
    expected_api = prefix.removeprefix("/api/").removeprefix("/apis/")
    assert doc["apiVersion"] == expected_api
    if namespaced:
        return f"{prefix}/namespaces/{doc['metadata']['namespace']}/{plural}"
    return f"{prefix}/{plural}"


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_manifest_is_accepted_by_the_apiserver(
    cp: ControlPlane, name: str, doc: dict[str, Any]
) -> None:
    path = collection(doc) + "?dryRun=All&fieldValidation=Strict"
    status, body = cp.request("POST", path, doc)
    assert 200 <= status < 300, f"{name}: {status} {body}"
    # The dry run answers with the object as it would be stored (defaults applied).
    assert body["kind"] == doc["kind"]
    assert body["metadata"]["name"] == doc["metadata"]["name"]


def test_daemon_set_pod_is_admitted(cp: ControlPlane) -> None:
    """The DaemonSet's pod itself (admission runs on Pods, not templates): the priority
    class resolves and the ServiceAccount is found."""
    sa = by_kind("ServiceAccount")
    status, body = cp.request("POST", collection(sa), sa)
    assert status in (201, 409), body
    template = by_kind("DaemonSet")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "nftproxy-",
            "namespace": "kube-system",
            **template["metadata"],
        },
        "spec": template["spec"] | {"nodeName": "node-1"},
    }
    status, body = cp.request(
        "POST", "/api/v1/namespaces/kube-system/pods?dryRun=All&fieldValidation=Strict", pod
    )
    assert status == 201, body
    assert body["spec"]["priorityClassName"] == "system-node-critical"
    assert body["spec"]["priority"] == 2_000_001_000


def test_every_manifest_is_in_the_kustomization() -> None:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == [p.name for p in MANIFESTS]
    assert kust["namespace"] == "kube-system"
    assert {d["kind"] for _, d in documents()} == set(COLLECTIONS)
    for _, doc in documents():
        if COLLECTIONS[doc["kind"]][2]:
            assert doc["metadata"]["namespace"] == "kube-system"


def test_cluster_role_grants_exactly_what_the_proxy_needs() -> None:
    role = by_kind("ClusterRole")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    read = ("get", "list", "watch")
    assert granted == {
        *(("", "services", v) for v in read),
        *(("", "nodes", v) for v in read),
        *(("discovery.k8s.io", "endpointslices", v) for v in read),
        *(("networking.k8s.io", "servicecidrs", v) for v in read),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    }
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no URLs
    binding = by_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = by_kind("ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "kube-system"}
    ]


def test_daemon_set_shape() -> None:
    ds = by_kind("DaemonSet")
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [c] = pod["containers"]
    assert c["image"] == "nftproxy:latest"
    sc = c["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"
    ]
    assert "--hostname-override=$(NODE_NAME)" in c["args"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] is True
    assert "/run/xtables.lock" not in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes[mounts["/etc/nftproxy"]["name"]]["configMap"]["name"]
        == by_kind("ConfigMap")["metadata"]["name"]
    )
    assert "--config=/etc/nftproxy/config.conf" in c["args"]


def test_config_map_holds_a_clean_kube_proxy_configuration() -> None:
    cm = by_kind("ConfigMap")
    opts = parse(cm["data"]["config.conf"], "configmap")
    assert opts.warnings == ()
    assert opts.healthz_bind_address == "0.0.0.0:10256"
    assert opts.metrics_bind_address == "127.0.0.1:10249"
    assert opts.sync_period == 30.0 and opts.min_sync_period == 1.0
