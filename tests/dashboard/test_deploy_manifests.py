"""deploy/dashboard/: every object accepted by a real kube-apiserver (server-side dry run,
strict field validation), its pod admitted under the `restricted` Pod Security Standard,
the dashboard's own rights no more than listing namespaces, nodes and Services, and the command it runs the
one `nftproxy dashboard` parses and serves."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from nftproxy.cli import parser
from nftproxy.dashboard.command import cmd_dashboard
from nftproxy.lab.apiserver import ControlPlane
from tests.support.dashboard import DEPLOY, dashboard_identity, manifests, serve_dashboard
from tests.support.users import EVERYTHING, namespace, ok, user

# kind -> (API prefix, plural, namespaced)
COLLECTIONS = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Service": ("/api/v1", "services", True),
}
WRITES = {"create", "update", "patch", "delete", "deletecollection", "*"}
# clusterrole.yaml says why each
DOCUMENTED = {("", "namespaces", "list"), ("", "nodes", "list"), ("", "services", "list")}
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy to loopback


def kustomization() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return found


def the(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def container() -> dict[str, Any]:
    [found] = the("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(found)


@pytest.fixture(scope="module")
def home(cp: ControlPlane) -> str:
    """The namespace the manifests are applied in, its pods held to `restricted`."""
    name = str(kustomization()["namespace"])
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
    return name


def collection(doc: dict[str, Any], ns: str) -> str:
    prefix, plural, namespaced = COLLECTIONS[doc["kind"]]
    assert doc["apiVersion"] == prefix.removeprefix("/api/").removeprefix("/apis/")
    return f"{prefix}/namespaces/{ns}/{plural}" if namespaced else f"{prefix}/{plural}"


def test_the_manifests_name_no_namespace_and_kustomize_lists_them_all() -> None:
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} == set(COLLECTIONS)  # no Namespace object
    for name, doc in docs:
        assert "namespace" not in doc["metadata"], f"{name}: the namespace is the installer's"
    assert sorted(kustomization()["resources"]) == sorted({name for name, _ in docs})
    # A binding's subject is the one place a namespace is written: the kustomization's.
    [subject] = the("ClusterRoleBinding")["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": the("ServiceAccount")["metadata"]["name"],
        "namespace": kustomization()["namespace"],
    }


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[f"{d['kind']}" for _, d in manifests()])
def test_every_object_is_accepted_by_the_apiserver(
    cp: ControlPlane, home: str, name: str, doc: dict[str, Any]
) -> None:
    path = collection(doc, home)
    status, body = cp.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", doc)
    assert status == 201, f"{name}: {status} {body}"
    assert body["kind"] == doc["kind"] and body["metadata"]["name"] == doc["metadata"]["name"]
    status, _ = cp.request("GET", f"{path}/{doc['metadata']['name']}")
    assert status == 404  # a dry run stores nothing


def pod_of(template: dict[str, Any], ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "nftproxy-dashboard-",
            "namespace": ns,
            **template["metadata"],
        },
        "spec": template["spec"],
    }


def test_its_pod_is_admitted_under_the_restricted_pod_security_standard(
    cp: ControlPlane, home: str
) -> None:
    template = the("Deployment")["spec"]["template"]
    path = f"/api/v1/namespaces/{home}/pods?dryRun=All&fieldValidation=Strict"
    status, body = cp.request("POST", path, pod_of(template, home))
    assert status == 201, body
    # The check is live: the same pod as root is refused.
    as_root = json.loads(json.dumps(template))
    as_root["spec"]["securityContext"].pop("runAsNonRoot")
    as_root["spec"]["securityContext"]["runAsUser"] = 0
    status, body = cp.request("POST", path, pod_of(as_root, home))
    assert status == 403 and "restricted" in body["message"], body


def test_the_cluster_role_lists_what_it_says_and_writes_nothing() -> None:
    role = the("ClusterRole")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == DOCUMENTED
    assert not {verb for _, _, verb in granted} & WRITES
    assert not any(resource in ("secrets", "*") for _, resource, _ in granted)
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no URLs, no names
    assert the("ClusterRoleBinding")["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }


def allowed(cp: ControlPlane, token: str, verb: str, resource: str, ns: str = "") -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}},
    }
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    status, body = cp.request("POST", path, review, token=token)
    assert status == 201, body
    return bool(body["status"]["allowed"])


def test_with_these_rights_the_dashboard_lists_namespaces_and_cannot_touch_apps(
    cp: ControlPlane, tmp_path: Path
) -> None:
    where = namespace(cp)
    token = dashboard_identity(cp, where)
    users = namespace(cp)
    user(cp, users, "someone", EVERYTHING)  # a namespace with a user and their apps
    for resource in ("namespaces", "nodes", "services"):
        assert allowed(cp, token, "list", resource)
    for verb in ("get", "list", "create", "update", "delete"):
        for resource in ("secrets", "configmaps", "deployments", "pods", "serviceaccounts"):
            assert not allowed(cp, token, verb, resource, users), (verb, resource)
    for verb in ("create", "update", "delete"):
        assert not allowed(cp, token, verb, "namespaces")
    status, _ = cp.request("GET", "/api/v1/namespaces", token=token)
    assert status == 200
    status, _ = cp.request("GET", f"/api/v1/namespaces/{users}/secrets", token=token)
    assert status == 403


def test_the_deployment_runs_a_dashboard_command_that_serves_its_probe_path(
    cp: ControlPlane, helm_binary: Path, tmp_path: Path
) -> None:
    c = container()
    args = parser().parse_args(c["args"])
    assert args.func is cmd_dashboard
    assert args.listen == "0.0.0.0:8080" and args.secure_cookies
    assert args.repo, "no chart repository"
    [port] = c["ports"]
    assert port["containerPort"] == int(args.listen.rpartition(":")[2])
    service_port = the("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]
    probes = [c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]]
    assert all(p["port"] == port["name"] for p in probes)

    # The same command, with these rights only, starts (it lists namespaces at start) and
    # answers on the probes' path.
    token = dashboard_identity(cp, namespace(cp))
    kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", token)
    repos = ["main=http://127.0.0.1:9"]  # never asked: the probe path needs no catalog
    with serve_dashboard(kubeconfig, helm_binary, repos, tmp_path / "log") as url:
        for probe in probes:
            with LOCAL.open(f"{url}{probe['path']}", timeout=5) as answer:
                assert answer.status == 200


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == the("ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = container()
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    # helm homes (tempfile.mkdtemp under $TMPDIR) and $HOME are on a writable emptyDir.
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable in ("TMPDIR", "HOME"):
        assert "emptyDir" in volumes[mounts[env[variable]]]
