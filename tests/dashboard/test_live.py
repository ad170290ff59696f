"""The dashboard's live parts against the real kube-apiserver, real helm and a chart
repository on loopback, the dashboard served by uvicorn: releases read from helm's Secrets
with the user's token, the app list following changes made with the helm CLI (server-sent
events), an app page's objects, and its Services' network as nftproxy compiles it for each
node, matched against `nftproxy explain` and followed when an EndpointSlice changes."""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from nftproxy.dashboard.app import DashboardConfig, create_app
from nftproxy.dashboard.catalog import RepoConfig
from nftproxy.dashboard.helm import ApiServer, Credentials, Helm
from nftproxy.dashboard.releases import DECODED_REVISIONS, ReleaseReader
from nftproxy.health import ProxierHealth, serve_healthz
from nftproxy.lab.apiserver import ControlPlane, free_ports
from nftproxy.lab.charts import WEB_APP, HttpChartRepo, write_chart
from tests.support.browser import Browser
from tests.support.dashboard import endpoint_slice, explain_cli, service_with_slices
from tests.support.users import EVERYTHING, VIEW, namespace, ok, user

# explain's node: the one the dashboard knows (node-a), a pod there sends.
FROM_POD = ("--node-name", "node-a", "--cluster-cidr", "10.244.0.0/16", "--from", "10.244.0.2")
DEADLINE = 60.0  # for a live page to show a change; it comes within a few intervals


EDGE_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  type: NodePort
  selector: {app: {{ .Values.app }}}
  externalIPs: [{{ .Values.externalIP }}]
  ports:
  - {port: 80, targetPort: 8080, protocol: TCP, nodePort: {{ .Values.nodePort }}}
"""
EDGE_VALUES = "app: edge\nnodePort: 30555\nexternalIP: 192.0.2.77\nreplicas: 1\n"
EDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
        "nodePort": {"type": "integer", "minimum": 30000, "maximum": 32767},
        "app": {"type": "string"},
        "externalIP": {"type": "string"},
    },
}


README = """\
# Edge

Serves *the edge*. | Port | Use |
|------|-----|
| 80 | web |

<script>alert("readme")</script>
<img src=x onerror=alert(1)>
[a link](https://example.org/docs) and [a trap](javascript:alert(1))
"""


def with_readme(chart: Path) -> Path:
    (chart / "README.md").write_text(README)
    return chart


@pytest.fixture(scope="module")
def repo(packager: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpChartRepo]:
    src = tmp_path_factory.mktemp("charts")
    with HttpChartRepo(packager, tmp_path_factory.mktemp("repo")) as served:
        served.publish(
            [
                write_chart(
                    src,
                    "webapp",
                    "1.0.0",
                    values="replicas: 2\n",
                    templates=WEB_APP,
                ),
                write_chart(src / "n", "note", "0.1.0", templates={}),
                with_readme(
                    write_chart(
                        src / "e",
                        "edge",
                        "1.0.0",
                        values=EDGE_VALUES,
                        schema=json.dumps(EDGE_SCHEMA),
                        templates={"service.yaml": EDGE_SERVICE},
                    )
                ),
            ]
        )
        yield served


@pytest.fixture(scope="module")
def health() -> Iterator[tuple[ProxierHealth, int]]:
    """The health endpoint of `nftproxy run`, served on loopback: the node's proxy."""
    proxier = ProxierHealth()
    with serve_healthz(proxier, "127.0.0.1:0") as server:
        yield proxier, server.port


@pytest.fixture(scope="module")
def world(cp: ControlPlane, health: tuple[ProxierHealth, int]) -> dict[str, str]:
    mine, other = namespace(cp), namespace(cp)
    # One node, as a kubelet would register it; its proxy answers on loopback.
    node = {
        "metadata": {"name": "node-a"},
        "spec": {"podCIDR": "10.244.0.0/24"},
    }
    created = ok(cp, "POST", "/api/v1/nodes", node)
    created["status"] = {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
    ok(cp, "PUT", "/api/v1/nodes/node-a/status", created, want=200)
    return {
        "mine": mine,
        "other": other,
        "alice": user(cp, mine, "alice", EVERYTHING).token,
    }


@pytest.fixture(scope="module")
def dashboard(
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    health: tuple[ProxierHealth, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The dashboard served by uvicorn on loopback, as `nftproxy dashboard` serves it."""

    def nodes() -> list[dict[str, Any]]:
        return list(cp.request("GET", "/api/v1/nodes")[1]["items"])

    config = DashboardConfig(
        server=ApiServer(cp.url, insecure=True),
        helm=helm_binary,
        homes=tmp_path_factory.mktemp("homes"),
        namespaces=lambda: [world["mine"], world["other"]],
        repos=(RepoConfig("main", repo.url),),
        nodes=nodes,
        services=lambda: list(cp.request("GET", "/api/v1/services")[1]["items"]),
        proxy_health=f"http://{{address}}:{health[1]}/healthz",
        cluster_cidrs=("10.244.0.0/16",),
        live_interval=0.3,
    )
    [port] = free_ports(1)
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the dashboard did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def until(events: Iterator[str], wanted: str, *, absent: bool = False) -> str:
    deadline = time.monotonic() + DEADLINE
    for part in events:
        if (wanted in part) != absent:
            return part
        assert time.monotonic() < deadline, (
            f"no update {'without' if absent else 'with'} {wanted!r}"
        )
    raise AssertionError("the stream ended")


@pytest.fixture(scope="module")
def admin_helm(
    cp: ControlPlane, helm_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Helm:
    return Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path_factory.mktemp("admin"))


def test_releases_read_from_secrets_agree_with_helm_list(
    request: pytest.FixtureRequest,
    cp: ControlPlane,
    admin_helm: Helm,
    repo: HttpChartRepo,
    world: dict[str, str],
) -> None:
    admin = Credentials(cp.admin_token)
    alice = Credentials(world["alice"])
    admin_helm.install(admin, "first", "note", world["mine"], {}, repo=repo.url)
    admin_helm.install(admin, "second", "note", world["other"], {}, repo=repo.url)
    admin_helm.upgrade(admin, "first", "note", world["mine"], {"x": 1}, repo=repo.url)
    reader = ReleaseReader(ApiServer(cp.url, insecure=True))
    request.addfinalizer(reader.close)
    # Alice may list Secrets in her namespace only: the other says no, per namespace.
    hers = reader.current(alice, [world["mine"], world["other"]])
    assert hers.refused == {world["other"]}
    [first] = [r for r in hers.by_namespace[world["mine"]] if r.name == "first"]
    listed = {r["name"]: r for r in admin_helm.releases(admin, world["mine"])}
    assert (first.revision, first.status, first.chart_label, first.app_version) == (
        int(listed["first"]["revision"]),
        listed["first"]["status"],
        listed["first"]["chart"],
        listed["first"]["app_version"],
    )
    # The admin may list Secrets everywhere: one call, both namespaces.
    everything = reader.current(admin, [world["mine"], world["other"]])
    assert not everything.refused
    assert "second" in {r.name for r in everything.by_namespace[world["other"]]}
    history = reader.history(alice, world["mine"], "first")
    assert [r.revision for r in history.releases] == [1, 2]
    assert [r.status for r in history.releases] == ["superseded", "deployed"]
    assert history.latest is not None and history.latest.values == {"x": 1}
    assert reader.history(alice, world["mine"], "never-installed").latest is None


def test_a_release_made_with_the_helm_cli_appears_live_and_goes(
    dashboard: str, cp: ControlPlane, admin_helm: Helm, repo: HttpChartRepo, world: dict[str, str]
) -> None:
    browser = Browser(dashboard, world["alice"])
    events = browser.events("/apps/live")
    first = next(events)
    assert "cli-live" not in first and world["mine"] in first
    admin = Credentials(cp.admin_token)
    admin_helm.install(admin, "cli-live", "note", world["mine"], {}, repo=repo.url)
    shown = until(events, "cli-live")
    assert f'href="/apps/{world["mine"]}/cli-live"' in shown
    admin_helm.uninstall(admin, "cli-live", world["mine"])
    until(events, "cli-live", absent=True)


def panel_shares(page: str) -> dict[str, str]:
    """The ClusterIP path of the network panel: endpoint -> percent as the page shows it."""
    table = page[page.index("<caption>ClusterIP ") :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr class="share">\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>', table)
    return {endpoint.strip(): percent.strip() for percent, endpoint in rows}


def test_an_app_page_shows_its_objects_and_its_network_as_the_node_programs_it(
    dashboard: str,
    cp: ControlPlane,
    world: dict[str, str],
    health: tuple[ProxierHealth, int],
    tmp_path: Path,
) -> None:
    ns = world["mine"]
    browser = Browser(dashboard, world["alice"])
    status, form = browser.get("/deploy?repo=main&chart=webapp&version=1.0.0")
    assert status == 200, form
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    deploy = {
        "csrf": csrf[1],
        "repo": "main",
        "chart": "webapp",
        "version": "1.0.0",
        "release": "shop",
        "namespace": ns,
        "source": "yaml",
        "values_yaml": "replicas: 2\n",
    }
    status, text = browser.post("/deploy", deploy)
    assert status == 303, text
    # No controller manager runs here: an EndpointSlice is written as its controller would.
    ok(
        cp,
        "POST",
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        endpoint_slice(ns, "shop", ["10.244.0.5", "10.244.0.6"], port_name="http"),
    )
    proxy, _ = health
    proxy.queued_update()
    status, page = browser.get(f"/apps/{ns}/shop")
    assert status == 200, page
    assert "Deployment" in page and "0/2 ready" in page  # honest: nothing runs pods here
    assert "No Pods yet" in page
    svc, *slices = service_with_slices(cp, ns, "shop")
    cluster_ip = svc["spec"]["clusterIP"]
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert f"ClusterIP {cluster_ip}" in page and f"NodePort {node_port}" in page
    shares = panel_shares(page)
    assert shares == {"10.244.0.5:8080": "50.0%", "10.244.0.6:8080": "50.0%"}
    assert shares == explain_cli([svc, *slices], tmp_path, f"{cluster_ip}:80/tcp", *FROM_POD)
    assert "node-a: healthy; it does not say when it synced" in page  # nothing synced yet
    # The slice gains an endpoint and the proxy syncs: the page follows, and still
    # matches explain.
    events = browser.events(f"/apps/{ns}/shop/live")
    next(events)
    path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/shop-live"
    current = cp.request("GET", path)[1]
    current["endpoints"] = endpoint_slice(
        ns, "shop", ["10.244.0.5", "10.244.0.6", "10.244.0.7"], port_name="http"
    )["endpoints"]
    status, body = cp.request("PUT", path, current)
    assert status == 200, body
    proxy.updated()  # the node's proxy syncs after the change
    part = until(events, "node-a: synced since the last change")
    part = until(events, "33.3%") if "33.3%" not in part else part
    objects = service_with_slices(cp, ns, "shop")
    assert panel_shares(part) == explain_cli(objects, tmp_path, f"{cluster_ip}:80/tcp", *FROM_POD)
    assert len(panel_shares(part)) == 3
    # A viewer who may not read EndpointSlices is told so, not shown a Service without
    # endpoints; nor is a change offered.
    viewer = Browser(dashboard, user(cp, ns, "viewer", VIEW).token)
    status, page = viewer.get(f"/apps/{ns}/shop")
    assert status == 200, page
    assert "its EndpointSlices could not be read with your rights" in page
    assert "refused (no endpoint" not in page and "<caption>ClusterIP" not in page
    assert "You may look at this app, not change it" in page
    assert "Upgrade or change values" not in page and "Delete shop" not in page


def form_of(browser: Browser, path: str) -> dict[str, str]:
    status, page = browser.get(path)
    assert status == 200, page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return {"csrf": csrf[1]}


def test_a_deploy_preview_shows_what_changes_on_the_nodes_and_what_clashes(
    dashboard: str, cp: ControlPlane, world: dict[str, str]
) -> None:
    ns, other = world["mine"], world["other"]
    # Someone else's Service holds NodePort 30555 and answers on 192.0.2.77:80.
    taken = {
        "metadata": {"name": "holder"},
        "spec": {
            "type": "NodePort",
            "externalIPs": ["192.0.2.77"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30555}],
        },
    }
    ok(cp, "POST", f"/api/v1/namespaces/{other}/services", taken)
    # A ready Pod the new Service's selector picks (no kubelet: its status is written).
    pod = {
        "metadata": {"name": "edge-pod", "labels": {"app": "edge"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}]},
    }
    created = ok(cp, "POST", f"/api/v1/namespaces/{ns}/pods", pod)
    created["status"] = {
        "phase": "Running",
        "podIP": "10.244.0.9",
        "podIPs": [{"ip": "10.244.0.9"}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    ok(cp, "PUT", f"/api/v1/namespaces/{ns}/pods/edge-pod/status", created, want=200)
    browser = Browser(dashboard, world["alice"])
    chart = {"repo": "main", "chart": "edge", "version": "1.0.0"}
    form = form_of(browser, "/deploy?repo=main&chart=edge&version=1.0.0") | chart
    form |= {"release": "edgy", "namespace": ns, "source": "yaml", "values_yaml": EDGE_VALUES}
    status, page = browser.post("/deploy", form | {"action": "preview"})
    assert status == 200, page
    page = html.unescape(page)
    assert "What changes on the nodes" in page
    assert (
        # alice may not see the other namespace: the Service there is not named.
        "Conflict: NodePort 30555/TCP is another Service's: the cluster will refuse it" in page
    )
    assert "Conflict: external IP 192.0.2.77:80/TCP is also another Service's" in page
    assert other not in page and "holder" not in page
    assert "Endpoints gained: 10.244.0.9" in page
    assert "external IP 192.0.2.77: every node answers on it" in page
    # Previewing installed nothing.
    status, _ = cp.request("GET", f"/api/v1/namespaces/{ns}/services/edgy")
    assert status == 404
    # Another port and no external IP: no conflict, and the install goes through.
    fine = EDGE_VALUES.replace("30555", "30556").replace("192.0.2.77", "192.0.2.78")
    status, page = browser.post("/deploy", form | {"values_yaml": fine, "action": "preview"})
    assert status == 200 and "Conflict" not in page, page
    status, page = browser.post("/deploy", form | {"values_yaml": fine, "action": "deploy"})
    assert status == 303, page
    status, svc = cp.request("GET", f"/api/v1/namespaces/{ns}/services/edgy")
    assert status == 200 and svc["spec"]["ports"][0]["nodePort"] == 30556
    # The same name again: said at once, before any preview or helm.
    status, page = browser.post("/deploy", form | {"values_yaml": fine, "action": "preview"})
    assert status == 422 and f"edgy already exists in {ns}" in page


def test_the_form_and_the_yaml_editor_agree_both_ways(
    dashboard: str, world: dict[str, str]
) -> None:
    browser = Browser(dashboard, world["alice"])
    chart = {"repo": "main", "chart": "edge", "version": "1.0.0"}
    form = form_of(browser, "/deploy?repo=main&chart=edge&version=1.0.0") | chart

    def sync(**fields: str) -> dict[str, Any]:
        status, text = browser.post("/values", form | fields)
        assert status == 200, text
        answer: dict[str, Any] = json.loads(text)
        return answer

    # A field changed: the YAML follows, keeping what only the YAML held.
    yaml_text = EDGE_VALUES + "extra: {kept: true}\n"
    answer = sync(direction="form", values_yaml=yaml_text, replicas="3", nodePort="30555")
    assert "replicas: 3" in answer["values_yaml"] and "kept: true" in answer["values_yaml"]
    assert answer["errors"] == {}
    # The YAML changed: the fields follow, and the schema's complaint names the field.
    answer = sync(direction="yaml", values_yaml="replicas: 9\nnodePort: 30001\n")
    assert answer["fields"]["replicas"] == "9" and answer["fields"]["nodePort"] == "30001"
    assert set(answer["errors"]) == {"replicas"}
    answer = sync(direction="yaml", values_yaml="replicas: [unclosed\n")
    assert "values_yaml" in answer["errors"]
    # A field that is not a number is named, and the YAML is left as it was.
    answer = sync(direction="form", values_yaml=EDGE_VALUES, replicas="many")
    assert answer["errors"] == {"replicas": "should be a whole number"}
    # Without the page's CSRF token nothing is answered.
    status, _ = browser.post("/values", chart | {"csrf": "forged", "direction": "yaml"})
    assert status == 403


def test_a_charts_page_shows_its_readme_without_its_markup_and_its_values(
    dashboard: str, world: dict[str, str]
) -> None:
    browser = Browser(dashboard, world["alice"])
    status, page = browser.get("/catalog?q=edge")
    assert status == 200 and 'href="/catalog/main/edge"' in page
    status, page = browser.get("/catalog/main/edge")
    assert status == 200, page
    readme = page[page.index('<article class="readme">') : page.index("</article>")]
    assert "<h1>Edge</h1>" in readme and "<em>the edge</em>" in readme
    assert '<a href="https://example.org/docs">a link</a>' in readme
    # The README's own markup is text, and a javascript: link is not a link.
    assert "<script>" not in readme and "&lt;script&gt;" in readme
    assert "<img" not in readme and "&lt;img" in readme
    assert 'href="javascript' not in readme and "[a trap](javascript:alert(1))" in readme
    assert "nodePort: 30555" in page  # the default values
    assert 'href="/deploy?repo=main&amp;chart=edge&amp;version=1.0.0"' in page
    assert browser.get("/catalog/main/no-such-chart")[0] == 404


def test_a_long_or_broken_history_is_read_within_bounds(
    request: pytest.FixtureRequest, cp: ControlPlane, world: dict[str, str]
) -> None:
    """Release Secrets written by anyone who may write Secrets there: 40 revisions (only
    the newest DECODED_REVISIONS are decoded, the others shown as their labels say), and
    a newest revision that is not a release (shown, saying why, and remembered as such)."""
    ns = world["mine"]

    def write(name: str, revision: int, data: bytes) -> None:
        secret = {
            "metadata": {
                "name": f"sh.helm.release.v1.{name}.v{revision}",
                "labels": {
                    "owner": "helm",
                    "name": name,
                    "version": str(revision),
                    "status": "deployed" if revision == 40 else "superseded",
                },
            },
            "type": "helm.sh/release.v1",
            "data": {"release": base64.b64encode(data).decode()},
        }
        ok(cp, "POST", f"/api/v1/namespaces/{ns}/secrets", secret)

    for revision in range(1, 41):
        release = {
            "name": "many",
            "version": revision,
            "info": {"status": "x"},
            "chart": {"metadata": {"name": "c", "version": f"1.0.{revision}"}},
        }
        write("many", revision, base64.b64encode(gzip.compress(json.dumps(release).encode())))
    write("broken", 1, b"not a release")
    reader = ReleaseReader(ApiServer(cp.url, insecure=True))
    request.addfinalizer(reader.close)
    alice = Credentials(world["alice"])
    history = reader.history(alice, ns, "many")
    assert [r.revision for r in history.releases] == list(range(1, 41))
    assert history.releases[-1].chart_version == "1.0.40"
    decoded = [r for r in history.releases if r.chart_version]
    assert len(decoded) == DECODED_REVISIONS
    assert history.releases[0].description == "not read"
    broken = reader.history(alice, ns, "broken")
    assert broken.latest is not None and "not base64" in broken.latest.problem
    assert broken.releases[0].status == "unreadable"
