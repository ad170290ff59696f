"""What the dashboard's tests share: test charts (some with a values schema) for a chart
repository on loopback, what a release made read back from the cluster, and the dashboard
itself served by its own command with the identity deploy/dashboard gives it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nftproxy.dashboard.helm import ApiServer, Credentials, Helm
from nftproxy.lab.apiserver import ControlPlane, free_ports
from nftproxy.lab.charts import HttpChartRepo, write_chart
from nftproxy.lab.processes import die_with_parent, stop_processes
from tests.support.users import ok

__all__ = [
    "CONFIGMAP",
    "CONFIGURABLE",
    "DEPLOY",
    "SCHEMA",
    "SETTINGS",
    "dashboard_identity",
    "endpoint_slice",
    "explain_cli",
    "installed",
    "manifests",
    "publish_test_charts",
    "revisions",
    "serve_dashboard",
    "service_with_slices",
    "settings",
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "dashboard"

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cm
data:
  a: "1"
"""


SCHEMA = {
    "type": "object",
    "required": ["replicas"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
        "color": {"enum": ["blue", "green"]},
    },
}
# The chart version the deploy tests deploy, as the deploy form names it.
CONFIGURABLE = {"repo": "main", "chart": "configurable", "version": "1.0.0"}
SETTINGS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  replicas: {{ .Values.replicas | quote }}
  color: {{ .Values.color | quote }}
"""


def publish_test_charts(served: HttpChartRepo, src: Path) -> None:
    """hello 0.1.0 and web 1.0.0; configurable 1.0.0 and 1.1.0 (a schema, a ConfigMap of
    its values); sneaky 1.0.0, whose description is markup."""
    served.publish(
        [
            write_chart(src, "hello", "0.1.0", templates={"cm.yaml": CONFIGMAP}),
            write_chart(src / "w", "web", "1.0.0"),
        ]
    )
    served.publish(
        [
            write_chart(
                src / "c",
                "configurable",
                "1.0.0",
                values="replicas: 2\ncolor: blue\n",
                schema=json.dumps(SCHEMA),
                templates={"cm.yaml": SETTINGS},
            ),
            write_chart(
                src / "c11",
                "configurable",
                "1.1.0",
                values="replicas: 2\ncolor: blue\n",
                schema=json.dumps(SCHEMA),
                templates={"cm.yaml": SETTINGS + '  edition: "1.1"\n'},
            ),
        ]
    )
    # A description is text from a repository: it must never become markup.
    chart = write_chart(src / "x", "sneaky", "1.0.0")
    chart_yaml = chart / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text().replace(
            "description: sneaky for tests", "description: '<script>alert(1)</script>'"
        )
    )
    served.publish([chart])


def settings(cp: ControlPlane, ns: str, release: str) -> dict[str, str] | None:
    status, got = cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{release}-settings")
    return got["data"] if status == 200 else None


def installed(
    cp: ControlPlane, helm_binary: Path, repo: HttpChartRepo, ns: str, name: str, tmp_path: Path
) -> None:
    """Revisions 1 (configurable 1.0.0, replicas 1) and 2 (replicas 5), made with helm as
    the admin."""
    admin = Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path / "admin")
    who = Credentials(cp.admin_token)
    admin.install(who, name, "configurable", ns, {"replicas": 1}, version="1.0.0", repo=repo.url)
    admin.upgrade(who, name, "configurable", ns, {"replicas": 5}, version="1.0.0", repo=repo.url)


def revisions(cp: ControlPlane, ns: str, release: str) -> dict[int, str]:
    """What the cluster holds of a release, read as the admin: helm keeps each revision as a
    Secret labelled with the release's name and the revision's status."""
    selector = f"owner%3Dhelm%2Cname%3D{release}"
    got = ok(cp, "GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector={selector}", want=200)
    labels = [item["metadata"]["labels"] for item in got["items"]]
    return {int(label["version"]): label["status"] for label in labels}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """deploy/dashboard's objects, (file name, object), kustomization.yaml aside."""
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


def _the(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def dashboard_identity(cp: ControlPlane, ns: str) -> str:
    """The dashboard's service account as deploy/dashboard makes it, in `ns`, bound to its
    ClusterRole's rules; a token for it. (The cluster-wide objects are named after `ns`:
    several can coexist.)"""
    account = _the("ServiceAccount")["metadata"]["name"]
    role = f"{_the('ClusterRole')['metadata']['name']}-{ns}"
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": account}})
    rules = _the("ClusterRole")["rules"]
    ok(cp, "POST", f"{rbac}/clusterroles", {"metadata": {"name": role}, "rules": rules})
    binding = {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
    }
    ok(cp, "POST", f"{rbac}/clusterrolebindings", binding)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    got = ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", request)
    return str(got["status"]["token"])


# No proxy from the environment: the dashboard is on loopback.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def serve_dashboard(
    kubeconfig: Path,
    helm_binary: Path,
    repos: Sequence[str],
    log: Path,
    *,
    timeout: float = 30.0,
) -> Iterator[str]:
    """`nftproxy dashboard` on a free loopback port, its own identity from `kubeconfig`,
    `repos` as NAME=URL; its base URL once /signin answers. Stopped (by PID) on exit."""
    [port] = free_ports(1)
    argv = [sys.executable, "-m", "nftproxy", "dashboard", "--listen", f"127.0.0.1:{port}"]
    argv += ["--kubeconfig", str(kubeconfig), "--helm", str(helm_binary)]
    for repo in repos:
        argv += ["--repo", repo]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with _LOCAL.open(f"{url}/signin", timeout=2) as page:
                    if page.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited ({proc.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not answer in {timeout:.0f}s")
            time.sleep(0.2)
        yield url
    finally:
        stop_processes([proc])


def endpoint_slice(
    ns: str,
    owner: str,
    ips: Sequence[str],
    *,
    port: int = 8080,
    port_name: str = "",
    node: str = "node-a",
) -> dict[str, Any]:
    """An EndpointSlice of `owner` with ready endpoints at `ips`, as its controller writes
    one (no controller manager runs with the test control plane); `port_name` is the
    Service port's name."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{owner}-live",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": owner},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node} for ip in ips
        ],
    }


def service_with_slices(cp: ControlPlane, ns: str, name: str) -> list[dict[str, Any]]:
    """A Service and its EndpointSlices as `kubectl get -o json` shows them (list items
    with their kind)."""
    status, svc = cp.request("GET", f"/api/v1/namespaces/{ns}/services/{name}")
    assert status == 200, svc
    path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
    status, slices = cp.request("GET", f"{path}?labelSelector=kubernetes.io/service-name={name}")
    assert status == 200, slices
    kind = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice"}
    return [svc, *({**kind, **item} for item in slices["items"])]


def explain_cli(objects: Sequence[Any], tmp: Path, to: str, *flags: str) -> dict[str, str]:
    """`nftproxy explain --json` on these objects: endpoint -> percent, as the dashboard's
    network panel shows it."""
    file = tmp / "objects.json"
    file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))
    argv = [sys.executable, "-m", "nftproxy", "explain", "--json", "--to", to, *flags]
    out = subprocess.run([*argv, str(file)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return {
        r["endpoint"] or r["verdict"]: f"{r['probability']:.1%}"
        for r in json.loads(out.stdout)["results"]
    }
