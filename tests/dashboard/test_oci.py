"""Charts from an OCI registry, end to end against the real parts: go-containerregistry's
registry on loopback with charts that helm itself packaged and pushed, next to a classic
repository; the catalog's listing, search, versions and metadata; archives checked against
their digests; a registry that wants a bearer token and hides its catalog; helm installing
from the registry into a real kube-apiserver as a user; and the dashboard's pages."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from nftproxy.dashboard.app import DashboardConfig, create_app
from nftproxy.dashboard.catalog import (
    Catalog,
    CatalogError,
    ChartVersion,
    OciLocation,
    Registry,
    RepoConfig,
    oci_location,
)
from nftproxy.dashboard.charts import ChartReadError, fetch_archive, read_archive
from nftproxy.dashboard.command import repo_option
from nftproxy.dashboard.helm import ApiServer, Helm, HelmError, oci_chart
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo, write_chart
from tests.dashboard.oci_registry import OciRegistry, RegistryGate
from tests.support.users import EVERYTHING, VIEW, namespace, user

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-greeting
data:
  greeting: {{ .Values.greeting | quote }}
"""
HELLO_VERSIONS = ["1.0.0-rc.1", "0.10.0", "0.2.0", "0.1.0"]  # newest first


@pytest.fixture(scope="module")
def pushed(
    oci_registry: OciRegistry, packager: Helm, tmp_path_factory: pytest.TempPathFactory
) -> OciRegistry:
    """hello in four versions and web (deprecated, with build metadata) under charts/,
    with an image that is no chart; one more chart under other/, not the configured path."""
    src = tmp_path_factory.mktemp("oci-charts")
    charts = [
        write_chart(
            src / v,
            "hello",
            v,
            values='greeting: "hello"\n',
            templates={"cm.yaml": CONFIGMAP},
        )
        for v in HELLO_VERSIONS
    ]
    web = write_chart(src / "web", "web", "1.0.0+build.7", app_version="2.4")
    with (web / "Chart.yaml").open("a") as chart_yaml:
        chart_yaml.write("deprecated: true\n")
    oci_registry.push(packager, [*charts, web])
    oci_registry.push(packager, [write_chart(src / "o", "elsewhere", "1.0.0")], path="other")
    oci_registry.push_image("charts/hello-image", "2.0.0")  # next to the charts, not one
    return oci_registry


@pytest.fixture(scope="module")
def classic(packager: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpChartRepo]:
    with HttpChartRepo(packager, tmp_path_factory.mktemp("repo")) as served:
        served.publish([write_chart(tmp_path_factory.mktemp("src"), "hello", "0.1.0")])
        yield served


def test_oci_urls_name_a_registry_a_path_plain_http_and_charts() -> None:
    assert oci_location("https://charts.example/x") is None
    assert oci_location("oci://registry.example/team/charts") == OciLocation(
        "registry.example", "team/charts"
    )
    assert oci_location("oci+http://127.0.0.1:5000/charts#web,hello,web") == OciLocation(
        "127.0.0.1:5000", "charts", plain_http=True, charts=("web", "hello")
    )
    assert oci_location("oci://registry.example") == OciLocation("registry.example", "")
    loc = OciLocation("r.example:5000", "a/b")
    assert loc.base == "https://r.example:5000"
    assert loc.reference("web") == "oci://r.example:5000/a/b/web"
    for bad in (
        "oci://",
        "oci://-r.example/x",
        "oci://r.example/Charts",
        "oci://r.example/a/../b",
        "oci://r.example/x#Web",
        "oci://r.example/x?plain-http",
        "oci://user@r.example/x",
        "oci+https://r.example/x",
    ):
        with pytest.raises(CatalogError):
            oci_location(bad)
    assert RepoConfig("r", "oci+http://127.0.0.1:1/x").plain_http
    assert not RepoConfig("r", "oci://127.0.0.1:1/x").plain_http
    assert not RepoConfig("r", "http://127.0.0.1:1/x").plain_http


def test_the_command_takes_oci_repositories() -> None:
    assert repo_option("lab=oci+http://127.0.0.1:5000/charts") == RepoConfig(
        "lab", "oci+http://127.0.0.1:5000/charts"
    )
    public = repo_option(" hub = oci://registry-1.docker.io/bitnamicharts#nginx,redis ")
    assert public.oci is not None and public.oci.charts == ("nginx", "redis")
    for bad in ("lab=oci://r.example/Upper", "lab=ftp://r.example/x", "=oci://r.example/x"):
        with pytest.raises(argparse.ArgumentTypeError):
            repo_option(bad)


def test_helm_names_an_oci_chart_by_its_reference_and_nothing_becomes_a_flag() -> None:
    assert oci_chart("https://charts.example", "web") is None
    assert oci_chart("oci://r.example/charts#web", "web") == ("oci://r.example/charts/web", False)
    assert oci_chart("oci+http://127.0.0.1:5000", "web") == ("oci://127.0.0.1:5000/web", True)
    for repo, chart in (
        ("oci://r.example/charts", "--help"),
        ("oci://r.example/charts", "../web"),
        ("oci://r.example/charts", "Web"),
        ("oci://-r.example/charts", "web"),
        ("oci://r.example/charts --plain-http", "web"),
    ):
        with pytest.raises(ValueError):
            oci_chart(repo, chart)


def test_the_catalog_lists_and_searches_an_http_repository_and_an_oci_registry(
    pushed: OciRegistry, classic: HttpChartRepo
) -> None:
    catalog = Catalog((RepoConfig("main", classic.url), RepoConfig("oci", pushed.url())))
    assert catalog.refresh() == {}
    assert [(f.repo, f.chart.name, f.chart.version) for f in catalog.search()] == [
        ("main", "hello", "0.1.0"),
        ("oci", "hello", "1.0.0-rc.1"),
        ("oci", "web", "1.0.0+build.7"),  # helm pushed it as the tag 1.0.0_build.7
    ]
    assert [(f.repo, f.chart.name) for f in catalog.search("hello TESTS")] == [
        ("main", "hello"),
        ("oci", "hello"),
    ]
    assert [(f.repo, f.chart.name) for f in catalog.search("web")] == [("oci", "web")]
    assert [v.version for v in catalog.versions("oci", "hello")] == HELLO_VERSIONS
    [web] = catalog.versions("oci", "web")
    assert (web.app_version, web.description, web.deprecated) == ("2.4", "web for tests", True)
    assert web.urls == (f"oci://{pushed.address}/charts/web:1.0.0_build.7",)
    assert web.digest.startswith("sha256:") and web.created
    newer = catalog.newer("oci", "hello", "0.2.0")
    assert newer is not None and newer.version == "1.0.0-rc.1"
    # The chart under other/ is not under the configured path; the whole registry has it.
    assert catalog.versions("oci", "elsewhere") == ()
    everything = Catalog((RepoConfig("all", f"oci+http://{pushed.address}"),))
    assert everything.refresh() == {} and everything.search() == []  # nothing at the top
    other = Catalog((RepoConfig("other", pushed.url("other")),))
    assert other.refresh() == {} and [f.chart.name for f in other.search()] == ["elsewhere"]
    # Nothing changed: the same index (the config blobs come from the digest cache).
    before = catalog.index("oci")
    assert catalog.refresh() == {} and catalog.index("oci") is before


def test_named_charts_are_the_repositorys_charts_and_a_missing_one_is_named(
    pushed: OciRegistry,
) -> None:
    catalog = Catalog(
        (
            RepoConfig("one", pushed.url() + "#web"),
            RepoConfig("typo", pushed.url() + "#hello,helo"),
        )
    )
    errors = catalog.refresh()
    assert [f.chart.name for f in catalog.search() if f.repo == "one"] == ["web"]
    assert set(errors) == {"typo"}
    assert "repository typo" in errors["typo"] and "no chart helo" in errors["typo"]


def test_listings_are_followed_page_by_page(pushed: OciRegistry) -> None:
    location = oci_location(pushed.url())
    assert location is not None
    registry = Registry("repository oci", location, page_size=3)
    tags = registry.tags("charts/hello")
    assert sorted(tags) == sorted(["0.1.0", "0.2.0", "0.10.0", "1.0.0-rc.1"])
    assert registry.requests == 2  # three, then one: a short page is the last
    with pytest.raises(CatalogError, match="is no name"):
        registry.tags("charts/../hello")
    bounded = Registry("repository oci", location, page_size=1, max_requests=2)
    with pytest.raises(CatalogError, match="repository oci: more than 2 requests"):
        bounded.tags("charts/hello")


def test_an_oci_archive_is_fetched_read_and_checked_against_its_digests(
    pushed: OciRegistry,
) -> None:
    repo = RepoConfig("oci", pushed.url())
    catalog = Catalog((repo,))
    assert catalog.refresh() == {}
    newest = catalog.versions("oci", "hello")[0]
    files = read_archive(fetch_archive(repo, newest))
    assert (files.name, files.version) == ("hello", "1.0.0-rc.1")
    assert files.values == {"greeting": "hello"}
    # A version the catalog did not describe is fetched by its tag.
    files = read_archive(fetch_archive(repo, ChartVersion("web", "1.0.0+build.7")))
    assert (files.name, files.version) == ("web", "1.0.0+build.7")
    made_up = ChartVersion("hello", "0.1.0", digest="sha256:" + "0" * 64)
    with pytest.raises(ChartReadError, match="HTTP 404"):
        fetch_archive(repo, made_up)
    with RegistryGate(pushed.address, tamper="/blobs/") as gate:
        with pytest.raises(ChartReadError, match="does not match the manifest's digest"):
            fetch_archive(RepoConfig("oci", gate.url()), newest)
        # The catalog's metadata comes from a blob too: refused the same way.
        errors = Catalog((RepoConfig("bad", gate.url()),)).refresh()
        assert "repository bad" in errors["bad"] and "does not match its digest" in errors["bad"]
    with (
        RegistryGate(pushed.address, tamper="/manifests/") as gate,
        pytest.raises(ChartReadError, match="the manifest does not match its digest"),
    ):
        fetch_archive(RepoConfig("oci", gate.url()), newest)


def test_a_registry_that_wants_a_token_and_hides_its_catalog(pushed: OciRegistry) -> None:
    with RegistryGate(pushed.address, refuse_catalog=True) as gate:
        catalog = Catalog(
            (RepoConfig("hidden", gate.url()), RepoConfig("named", gate.url() + "#hello,web"))
        )
        errors = catalog.refresh()
        assert set(errors) == {"hidden"}
        assert "does not list its catalog (HTTP 403)" in errors["hidden"]
        assert "#CHART,CHART" in errors["hidden"]
        assert [v.version for v in catalog.versions("named", "hello")] == HELLO_VERSIONS
        assert gate.token_requests, "no anonymous token was asked for"
        assert all("service=gate" in r for r in gate.token_requests)
        newest = catalog.versions("named", "web")[0]
        files = read_archive(fetch_archive(RepoConfig("named", gate.url()), newest))
        assert files.name == "web"


def test_oci_means_https_unless_plain_http_is_asked_for(pushed: OciRegistry) -> None:
    catalog = Catalog((RepoConfig("tls", f"oci://{pushed.address}/charts"),), timeout=5)
    errors = catalog.refresh()
    assert "repository tls" in errors["tls"] and f"https://{pushed.address}/v2/" in errors["tls"]


@pytest.fixture(scope="module")
def helm(helm_binary: Path, cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path_factory.mktemp("homes"))


def greeting(cp: ControlPlane, ns: str, release: str) -> str | None:
    status, got = cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{release}-greeting")
    return got["data"]["greeting"] if status == 200 else None


def test_a_user_installs_and_upgrades_from_the_oci_registry_with_their_own_rights(
    cp: ControlPlane, helm: Helm, pushed: OciRegistry
) -> None:
    ns = namespace(cp)
    alice, viewer = user(cp, ns, "alice", EVERYTHING), user(cp, ns, "viewer", VIEW)
    repo = pushed.url()
    done = helm.install(alice, "web", "hello", ns, {"greeting": "hi"}, version="0.1.0", repo=repo)
    assert done["info"]["status"] == "deployed" and done["chart"]["metadata"]["version"] == "0.1.0"
    assert greeting(cp, ns, "web") == "hi"
    rendered = helm.template("web", "hello", ns, {"greeting": "next"}, version="0.2.0", repo=repo)
    assert rendered.startswith("---") and 'greeting: "next"' in rendered
    helm.upgrade(alice, "web", "hello", ns, {"greeting": "hey"}, version="0.2.0", repo=repo)
    assert greeting(cp, ns, "web") == "hey"
    [listed] = helm.releases(alice, ns)
    assert listed["chart"] == "hello-0.2.0"
    # A version with '+' (a tag with '_'): helm says more about pulling it, still not JSON.
    plus = helm.install(alice, "plus", "web", ns, {}, version="1.0.0+build.7", repo=repo)
    assert plus["chart"]["metadata"]["version"] == "1.0.0+build.7"
    assert helm.template("plus", "web", ns, {}, version="1.0.0+build.7", repo=repo).strip() == ""
    with pytest.raises(HelmError, match="forbidden"):
        helm.install(viewer, "mine", "hello", ns, {}, version="0.1.0", repo=repo)
    # The same registry named as HTTPS: helm does not fall back to plain HTTP.
    with pytest.raises(HelmError):
        helm.install(
            alice, "tls", "hello", ns, {}, version="0.1.0", repo=f"oci://{pushed.address}/charts"
        )
    assert greeting(cp, ns, "tls") is None


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def test_the_dashboard_lists_an_oci_chart_and_deploys_it(
    cp: ControlPlane,
    helm_binary: Path,
    pushed: OciRegistry,
    classic: HttpChartRepo,
    tmp_path: Path,
) -> None:
    ns = namespace(cp)
    alice = user(cp, ns, "alice", EVERYTHING)
    config = DashboardConfig(
        server=ApiServer(cp.url, insecure=True),
        helm=helm_binary,
        homes=tmp_path / "homes",
        namespaces=lambda: [ns],
        repos=(RepoConfig("main", classic.url), RepoConfig("oci", pushed.url())),
    )
    with TestClient(create_app(config), base_url="http://testserver") as client:
        form = client.get("/signin")
        signed = client.post(
            "/signin",
            data={"csrf": csrf_of(form.text), "token": alice.token},
            follow_redirects=False,
        )
        assert signed.status_code == 303
        page = client.get("/catalog", params={"q": "web"})
        assert page.status_code == 200
        assert 'web</a> <span class="badge">deprecated</span></td>' in page.text
        assert "<td>oci</td><td>1.0.0+build.7</td><td>2.4</td>" in page.text
        wanted = {"repo": "oci", "chart": "hello", "version": "0.2.0"}
        form = client.get("/deploy", params=wanted)
        assert form.status_code == 200, form.text
        assert "<h1>Deploy hello 0.2.0</h1>" in form.text
        assert "greeting: &#34;hello&#34;" in form.text  # the chart's values.yaml, escaped
        answer = client.post(
            "/deploy",
            data={
                **wanted,
                "csrf": csrf_of(form.text),
                "release": "from-oci",
                "namespace": ns,
                "source": "yaml",
                "values_yaml": "greeting: from the registry\n",
            },
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        assert greeting(cp, ns, "from-oci") == "from the registry"
        assert "hello-0.2.0" in client.get("/apps").text
