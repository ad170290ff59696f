"""The dashboard's web pages (nftproxy.dashboard.app) through HTTP, against the real
kube-apiserver, real helm and a chart repository on loopback: sign-in with a user's own
token, sessions and CSRF, the apps a user may see, the catalog, the forms. The same pages
in a real browser: tests/dashboard/browser."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from nftproxy.dashboard.app import SECURITY_HEADERS, DashboardConfig, create_app
from nftproxy.dashboard.catalog import RepoConfig
from nftproxy.dashboard.helm import ApiServer, Credentials, Helm
from nftproxy.lab.apiserver import ControlPlane, free_ports
from nftproxy.lab.charts import HttpChartRepo
from nftproxy.lab.processes import stop_processes
from tests.support.dashboard import CONFIGURABLE, installed, settings


def make_config(
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    homes: Path,
    **kw: Any,
) -> DashboardConfig:
    return DashboardConfig(
        server=ApiServer(cp.url, insecure=True),
        helm=helm_binary,
        homes=homes,
        namespaces=lambda: [world["mine"], world["theirs"], "default"],
        repos=(RepoConfig("main", repo.url),),
        **kw,
    )


@pytest.fixture
def client(
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> Iterator[TestClient]:
    config = make_config(cp, helm_binary, repo, world, tmp_path / "homes")
    with TestClient(create_app(config), base_url="http://testserver") as c:
        yield c


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def sign_in(client: TestClient, token: str) -> str:
    form = client.get("/signin")
    answer = client.post(
        "/signin", data={"csrf": csrf_of(form.text), "token": token}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"]


def test_pages_need_a_signed_in_user(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/apps"
    for path in ("/apps", "/catalog"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/signin"


def test_a_token_the_cluster_refuses_gets_a_clear_page_and_no_session(client: TestClient) -> None:
    form = client.get("/signin")
    answer = client.post("/signin", data={"csrf": csrf_of(form.text), "token": "made-up-token"})
    assert answer.status_code == 401
    assert "does not accept this token" in answer.text
    assert "made-up-token" not in answer.text and "Traceback" not in answer.text
    assert "nftproxy_session" not in answer.headers.get("set-cookie", "")


def test_signing_in_without_the_forms_csrf_token_is_refused(
    client: TestClient, world: dict[str, str]
) -> None:
    client.get("/signin")
    answer = client.post("/signin", data={"csrf": "forged", "token": world["alice"]})
    assert answer.status_code == 403
    assert client.get("/apps", follow_redirects=False).status_code == 303


def test_a_user_sees_the_namespaces_and_apps_their_rights_allow(
    client: TestClient,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    # Someone else installs with the helm CLI (here: as the cluster's admin).
    admin = Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path / "admin")
    admin.install(
        Credentials(cp.admin_token), "cli-made", "hello", world["mine"], {}, repo=repo.url
    )

    cookie = sign_in(client, world["alice"])
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/apps")
    assert page.status_code == 200
    assert f"system:serviceaccount:{world['mine']}:alice" in page.text
    assert world["mine"] in page.text and world["theirs"] not in page.text
    assert "cli-made" in page.text and "hello-0.1.0" in page.text
    assert '<span class="badge">deploy</span>' in page.text
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value


def test_a_viewer_sees_their_namespace_as_view_only(
    client: TestClient, world: dict[str, str]
) -> None:
    sign_in(client, world["bob"])
    page = client.get("/apps").text
    assert world["theirs"] in page and world["mine"] not in page
    assert "view only" in page


def test_the_catalog_lists_and_searches_the_repository_and_escapes_its_text(
    client: TestClient, world: dict[str, str]
) -> None:
    sign_in(client, world["bob"])
    everything = client.get("/catalog").text
    assert "hello" in everything and "web" in everything
    assert "<script>alert(1)</script>" not in everything
    assert "&lt;script&gt;" in everything
    found = client.get("/catalog", params={"q": "web"}).text
    assert ">web<" in found and ">hello<" not in found


def test_signing_out_needs_the_sessions_csrf_token_and_ends_the_session(
    client: TestClient, world: dict[str, str]
) -> None:
    sign_in(client, world["alice"])
    page = client.get("/apps").text
    assert client.post("/signout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/apps", follow_redirects=False).status_code == 200
    answer = client.post("/signout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert answer.status_code == 303
    assert client.get("/apps", follow_redirects=False).status_code == 303


def test_the_command_serves_the_sign_in_page(
    cp: ControlPlane, helm_binary: Path, tmp_path: Path, world: dict[str, str]
) -> None:
    [port] = free_ports(1)
    kubeconfig = cp.kubeconfig(tmp_path / "kc", cp.admin_token)
    argv = [
        sys.executable,
        "-m",
        "nftproxy",
        "dashboard",
        "--listen",
        f"127.0.0.1:{port}",
        "--kubeconfig",
        str(kubeconfig),
        "--helm",
        str(helm_binary),
    ]
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/signin", timeout=2) as page:
                    assert (
                        page.status == 200
                        and "Paste a Kubernetes bearer token" in page.read().decode()
                    )
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.2)
    finally:
        stop_processes([proc])


def test_a_token_with_a_line_break_is_refused_plainly_and_never_echoed(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    form = client.get("/signin")
    secret = "first-half-of-a-token\nsecond-half-of-it"
    answer = client.post("/signin", data={"csrf": csrf_of(form.text), "token": secret})
    assert answer.status_code == 400 and "That is not a token" in answer.text
    assert "first-half" not in answer.text and "second-half" not in answer.text
    assert not any("second-half" in r.getMessage() for r in caplog.records)


def test_forms_beyond_what_the_pages_send_are_refused_unread(client: TestClient) -> None:
    form = client.get("/signin")
    csrf = csrf_of(form.text)
    big = client.post("/signin", data={"csrf": csrf, "token": "x" * (70 << 10)})
    assert big.status_code == 413
    upload = client.post("/signin", data={"csrf": csrf}, files={"token": ("t", b"abc")})
    assert upload.status_code == 413


def test_under_tls_cookies_are_secure_host_cookies(
    cp: ControlPlane, helm_binary: Path, repo: HttpChartRepo, world: dict[str, str], tmp_path: Path
) -> None:
    config = make_config(cp, helm_binary, repo, world, tmp_path / "h", secure_cookies=True)
    with TestClient(create_app(config), base_url="https://testserver") as secure:
        cookie = sign_in(secure, world["alice"])
        assert cookie.startswith("__Host-nftproxy_session=") and "Secure" in cookie
        assert secure.get("/apps").status_code == 200


def test_behind_a_proxy_its_header_says_who_on_every_request(
    cp: ControlPlane, helm_binary: Path, repo: HttpChartRepo, world: dict[str, str], tmp_path: Path
) -> None:
    config = make_config(
        cp, helm_binary, repo, world, tmp_path / "h", token_header="X-Forwarded-Access-Token"
    )
    app = create_app(config)
    with TestClient(app) as proxied:
        alice = {"X-Forwarded-Access-Token": world["alice"]}
        bob = {"X-Forwarded-Access-Token": world["bob"]}
        assert f":{world['mine']}:alice" in proxied.get("/apps", headers=alice).text
        # Someone else at the proxy, same browser: their identity, not the last one's.
        page = proxied.get("/apps", headers=bob).text
        assert f":{world['theirs']}:bob" in page and world["mine"] not in page
        assert proxied.get("/apps", follow_redirects=False).status_code == 303  # no header
        made_up = {"X-Forwarded-Access-Token": "made-up"}
        assert proxied.get("/apps", headers=made_up, follow_redirects=False).status_code == 303
        for _ in range(5):
            proxied.get("/apps", headers=alice)
        assert len(app.state.sessions) == 2  # one per user, not one per request


def deploy_form(client: TestClient) -> str:
    page = client.get("/deploy", params=CONFIGURABLE)
    assert page.status_code == 200, page.text
    return page.text


def test_the_deploy_form_comes_from_the_charts_schema_and_values(
    client: TestClient, world: dict[str, str]
) -> None:
    sign_in(client, world["alice"])
    page = deploy_form(client)
    assert 'name="replicas" value="2"' in page and 'min="1"' in page and 'max="5"' in page
    assert '<option value="green" >green</option>' in page or ">green</option>" in page
    assert "replicas: 2\ncolor: blue" in page  # the YAML editor holds the same values
    assert f'<option value="{world["mine"]}"' in page and world["theirs"] not in page


def test_a_value_the_schema_refuses_is_named_and_nothing_is_deployed(
    client: TestClient, cp: ControlPlane, world: dict[str, str]
) -> None:
    sign_in(client, world["alice"])
    form = deploy_form(client)
    answer = client.post(
        "/deploy",
        data={
            "csrf": csrf_of(form),
            **CONFIGURABLE,
            "release": "too-many",
            "namespace": world["mine"],
            "source": "form",
            "replicas": "9",
            "color": "green",
        },
    )
    assert answer.status_code == 422
    assert "9 is greater than the maximum of 5" in answer.text
    assert settings(cp, world["mine"], "too-many") is None


def test_deploying_from_the_form_and_from_yaml_installs_as_the_user(
    client: TestClient, cp: ControlPlane, world: dict[str, str]
) -> None:
    sign_in(client, world["alice"])
    common = {
        **CONFIGURABLE,
        "namespace": world["mine"],
    }
    answer = client.post(
        "/deploy",
        data={
            **common,
            "csrf": csrf_of(deploy_form(client)),
            "release": "by-form",
            "source": "form",
            "replicas": "3",
            "color": "green",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert settings(cp, world["mine"], "by-form") == {"replicas": "3", "color": "green"}
    answer = client.post(
        "/deploy",
        data={
            **common,
            "csrf": csrf_of(deploy_form(client)),
            "release": "by-yaml",
            "source": "yaml",
            "values_yaml": "replicas: 4\ncolor: blue\n",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert settings(cp, world["mine"], "by-yaml") == {"replicas": "4", "color": "blue"}
    assert "by-form" in client.get("/apps").text


def test_a_viewer_who_tries_to_deploy_gets_a_clear_refusal_and_nothing_changes(
    client: TestClient, cp: ControlPlane, world: dict[str, str]
) -> None:
    sign_in(client, world["bob"])
    form = deploy_form(client)
    answer = client.post(
        "/deploy",
        data={
            "csrf": csrf_of(form),
            **CONFIGURABLE,
            "release": "not-allowed",
            "namespace": world["theirs"],
            "source": "form",
            "replicas": "1",
            "color": "blue",
        },
    )
    assert answer.status_code == 403 and "forbidden" in answer.text
    assert settings(cp, world["theirs"], "not-allowed") is None
    assert client.post("/deploy", data={"csrf": "forged"}).status_code == 403


NOTES = "Thanks for installing {{ .Release.Name }}.\n"


def test_an_apps_page_shows_its_history_and_values_and_rolls_back(
    client: TestClient,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    installed(cp, helm_binary, repo, world["mine"], "shop", tmp_path)
    sign_in(client, world["alice"])
    page = client.get(f"/apps/{world['mine']}/shop")
    assert page.status_code == 200, page.text
    assert "configurable-1.0.0" in page.text and "replicas: 5" in page.text
    assert "Roll back to 1" in page.text and "Roll back to 2" not in page.text
    assert (
        client.post(
            f"/apps/{world['mine']}/shop/rollback", data={"csrf": "x", "revision": "1"}
        ).status_code
        == 403
    )
    answer = client.post(
        f"/apps/{world['mine']}/shop/rollback",
        data={"csrf": csrf_of(page.text), "revision": "1"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert settings(cp, world["mine"], "shop") == {"replicas": "1", "color": "blue"}
    assert "Roll back to 2" in client.get(f"/apps/{world['mine']}/shop").text  # now revision 3


def test_deleting_needs_the_name_typed_and_the_rights(
    client: TestClient,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    installed(cp, helm_binary, repo, world["theirs"], "kept", tmp_path)
    sign_in(client, world["bob"])  # may look, not change
    page = client.get(f"/apps/{world['theirs']}/kept").text
    answer = client.post(
        f"/apps/{world['theirs']}/kept/delete", data={"csrf": csrf_of(page), "confirm": "wrong"}
    )
    assert answer.status_code == 422 and "Type the release" in answer.text
    answer = client.post(
        f"/apps/{world['theirs']}/kept/delete", data={"csrf": csrf_of(page), "confirm": "kept"}
    )
    assert answer.status_code == 403 and "may not delete" in answer.text
    assert settings(cp, world["theirs"], "kept") is not None

    installed(cp, helm_binary, repo, world["mine"], "gone", tmp_path)
    sign_in(client, world["alice"])
    page = client.get(f"/apps/{world['mine']}/gone").text
    answer = client.post(
        f"/apps/{world['mine']}/gone/delete",
        data={"csrf": csrf_of(page), "confirm": "gone"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/apps"
    assert settings(cp, world["mine"], "gone") is None
    assert client.get(f"/apps/{world['mine']}/gone").status_code == 404
    assert client.get("/apps/Bad_Name/x").status_code == 404


def test_an_upgrade_shows_both_diffs_before_it_is_confirmed(
    client: TestClient,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    installed(cp, helm_binary, repo, world["mine"], "up", tmp_path)  # 1.0.0, replicas 5
    sign_in(client, world["alice"])
    url = f"/apps/{world['mine']}/up/upgrade"
    page = client.get(url)
    assert page.status_code == 200, page.text
    assert '<option value="1.1.0" selected>' in page.text and "replicas: 5" in page.text
    fields = {"csrf": csrf_of(page.text), "version": "1.1.0", "source": "yaml"}
    # Confirming what was never previewed only previews it.
    answer = client.post(url, data={**fields, "values_yaml": "replicas: 3\n", "action": "confirm"})
    assert answer.status_code == 200 and "What changes" in answer.text
    assert "-replicas: 5" in answer.text and "+replicas: 3" in answer.text
    assert "+  edition: &#34;1.1&#34;" in answer.text or "+  edition:" in answer.text
    assert settings(cp, world["mine"], "up") == {"replicas": "5", "color": "blue"}
    previewed = answer.text.split('name="previewed" value="')[1].split('"')[0]
    # Other values than those previewed: previewed again, not applied.
    answer = client.post(
        url,
        data={
            **fields,
            "values_yaml": "replicas: 4\n",
            "action": "confirm",
            "previewed": previewed,
        },
    )
    assert answer.status_code == 200 and "+replicas: 4" in answer.text
    assert settings(cp, world["mine"], "up") == {"replicas": "5", "color": "blue"}
    answer = client.post(
        url,
        data={
            **fields,
            "values_yaml": "replicas: 3\n",
            "action": "confirm",
            "previewed": previewed,
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert settings(cp, world["mine"], "up") == {"replicas": "3", "color": "blue", "edition": "1.1"}
    bad = client.post(url, data={**fields, "values_yaml": "replicas: 0\n", "action": "preview"})
    assert bad.status_code == 422 and "less than the minimum of 1" in bad.text
