"""The dashboard as a person uses it, in headless chromium: what each page shows, and what
the cluster then holds (read by the admin: the release's Secrets, the objects it made).

Pages are found by their roles, labels and text, as a screen reader would find them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nftproxy.dashboard.helm import ApiServer, Credentials, Helm
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo
from tests.support.dashboard import endpoint_slice, explain_cli, revisions, service_with_slices
from tests.support.users import ok

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip (or fail, under CI=true) and say why
    expect = None

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.sync_api import Locator, Page, Response

Shoot = Callable[[Any, str], None]
SignIn = Callable[[str], None]
WEBAPP = "/deploy?repo=main&chart=webapp&version=1.0.0"


def posted(page: Page, path: str) -> Callable[[Response], bool]:
    return lambda r: r.request.method == "POST" and r.url.endswith(path)


def first_column(page: Page, table: str) -> Locator:
    """The first cell of each row of the page's table of that name (expect(...).to_have_text
    waits)."""
    return page.get_by_role("table", name=table).locator("tbody tr td:first-child")


def following_pre(page: Page, heading: str) -> Locator:
    """The text a heading introduces (a diff, the values)."""
    found = page.get_by_role("heading", name=heading, exact=True)
    return found.locator("xpath=following-sibling::pre[1]")


def get(cp: ControlPlane, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    prefix = "/apis/apps/v1" if kind == "deployments" else "/api/v1"
    status, body = cp.request("GET", f"{prefix}/namespaces/{ns}/{kind}/{name}")
    assert status in (200, 404), body
    return body if status == 200 else None


def admin_installs(
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    tmp_path: Path,
    ns: str,
    name: str,
    *revisions_values: dict[str, Any],
) -> None:
    """Someone with the helm CLI (the cluster's admin): one revision of webapp 1.0.0 for
    each set of values."""
    admin = Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path / "admin")
    who = Credentials(cp.admin_token)
    first, *more = revisions_values
    admin.install(who, name, "webapp", ns, first, version="1.0.0", repo=repo.url)
    for values in more:
        admin.upgrade(who, name, "webapp", ns, values, version="1.0.0", repo=repo.url)


def test_a_bad_token_is_refused_and_a_good_one_shows_who_and_where(
    page: Page, cp: ControlPlane, world: dict[str, str], screenshot: Shoot
) -> None:
    page.goto("/apps")
    expect(page).to_have_url(re.compile(r"/signin$"))  # signed out: sent to sign in
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "signin")

    page.get_by_label("Token").fill("made-up-token")
    with page.expect_response(posted(page, "/signin")) as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("does not accept this token")
    expect(page.get_by_label("Token")).to_have_value("")
    assert "made-up-token" not in page.content()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)

    page.get_by_label("Token").fill(world["alice"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/apps$"))
    expect(page.get_by_role("banner")).to_contain_text(
        f"system:serviceaccount:{world['mine']}:alice"
    )
    # Of every namespace in the cluster, those where her own rights let her act.
    where = sorted([f"{world['mine']} deploy", f"{world['shared']} view only"])
    expect(page.get_by_role("heading", level=2)).to_have_text(where)
    page.goto(WEBAPP)
    offered = page.get_by_label("Namespace").locator("option").all_inner_texts()
    assert offered == [world["mine"]]
    # Signing in and looking made nothing.
    for ns in (world["mine"], world["shared"]):
        status, secrets = cp.request("GET", f"/api/v1/namespaces/{ns}/secrets")
        assert status == 200 and secrets["items"] == []


def test_the_catalog_lists_and_searches_charts(
    page: Page, sign_in: SignIn, world: dict[str, str], screenshot: Shoot
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(world["bob"])
    page.get_by_role("link", name="Catalog").click()
    expect(page.get_by_role("heading", name="Catalog")).to_be_visible()
    table = page.get_by_role("table")
    expect(first_column(page, "Charts")).to_have_text(
        ["configurable", "hello", "ocichart", "sneaky", "web", "webapp"]
    )
    expect(table.get_by_role("row", name=re.compile(r"^webapp main 1\.1\.0"))).to_be_visible()
    # The OCI registry's chart, beside the HTTP repository's.
    expect(table.get_by_role("row", name=re.compile(r"^ocichart lab 2\.0\.0"))).to_be_visible()
    # A repository's text is shown as text, never run.
    expect(table.get_by_text("<script>alert(1)</script>")).to_be_visible()

    search = page.get_by_role("searchbox", name="Search charts")
    search.fill("web")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"/catalog\?q=web$"))
    expect(first_column(page, "Charts")).to_have_text(["web", "webapp"])
    screenshot(page, "catalog")
    page.get_by_role("searchbox", name="Search charts").fill("no such chart")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No chart matches.")).to_be_visible()
    assert dialogs == []


def test_the_schema_form_refuses_a_bad_value_in_the_browser_and_on_the_server(
    page: Page, sign_in: SignIn, cp: ControlPlane, world: dict[str, str], screenshot: Shoot
) -> None:
    sign_in(world["alice"])
    page.goto(WEBAPP)
    expect(page.get_by_role("heading", name="Deploy webapp 1.0.0")).to_be_visible()
    # The form comes from the chart's schema, filled with its values.
    expect(page.get_by_label("Replicas")).to_have_value("1")
    expect(page.get_by_label("Greeting")).to_have_value("hello")
    expect(page.get_by_label("Service port")).to_have_value("80")
    page.get_by_label("Release name").fill("too-many")
    page.get_by_label("Replicas").fill("9")
    page.get_by_label("Greeting").fill("Hi!")

    sent: list[str] = []
    # The values editor asks /values as the user types; the form itself goes to /deploy.
    page.on(
        "request",
        lambda r: sent.append(r.url) if r.method == "POST" and r.url.endswith("/deploy") else None,
    )
    page.get_by_role("button", name="Deploy").click()
    replicas, greeting = page.get_by_label("Replicas"), page.get_by_label("Greeting")
    assert replicas.evaluate("el => el.validity.valid") is False
    assert replicas.evaluate("el => el.validity.rangeOverflow") is True
    assert greeting.evaluate("el => el.validity.patternMismatch") is True
    assert replicas.evaluate("el => el.validationMessage") != ""
    assert sent == [], "the browser sent a form it should have refused"
    expect(page).to_have_url(re.compile(re.escape(WEBAPP) + "$"))

    # Past the browser (as a script would be): the server names each field's problem.
    page.locator("form[action='/deploy']").evaluate("form => { form.noValidate = true }")
    with page.expect_response(posted(page, "/deploy")) as answer:
        page.get_by_role("button", name="Deploy").click()
    assert answer.value.status == 422
    near = page.locator("p", has=page.get_by_label("Replicas")).get_by_role("alert")
    expect(near).to_have_text("9 is greater than the maximum of 5")
    near = page.locator("p", has=page.get_by_label("Greeting")).get_by_role("alert")
    expect(near).to_contain_text("does not match")
    assert revisions(cp, world["mine"], "too-many") == {}
    assert get(cp, world["mine"], "deployments", "too-many") is None


def test_a_release_name_helm_refuses_is_refused_in_the_browser(
    page: Page, sign_in: SignIn, world: dict[str, str]
) -> None:
    warnings: list[str] = []
    page.on("console", lambda m: warnings.append(m.text) if "attern" in m.text else None)
    sign_in(world["alice"])
    page.goto(WEBAPP)
    page.get_by_label("Release name").fill("Too_Many")
    assert page.get_by_label("Release name").evaluate("el => el.validity.patternMismatch")
    assert warnings == []


def test_deploying_from_the_form_makes_the_release_and_its_objects(
    page: Page, sign_in: SignIn, cp: ControlPlane, world: dict[str, str], screenshot: Shoot
) -> None:
    mine = world["mine"]
    sign_in(world["alice"])
    page.goto(WEBAPP)
    page.get_by_label("Release name").fill("shop")
    page.get_by_label("Replicas").fill("3")
    page.get_by_label("Greeting").fill("hi there")
    page.get_by_label("Tier").select_option("worker")
    page.get_by_label("Debug logging").select_option("true")
    page.get_by_label("Service port").fill("8080")
    values = page.get_by_label("The chart's values; the form's fields are part of them.")
    expect(values).to_have_value(re.compile(r"^  port: 8080$", re.M))  # the YAML followed
    expect(values).to_have_value(re.compile(r"^replicaCount: 3$", re.M))
    screenshot(page, "deploy-form")
    page.get_by_role("button", name="Deploy").click()

    # The new app's page first, then the list holds it.
    expect(page).to_have_url(re.compile(rf"/apps/{mine}/shop$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("shop")
    page.get_by_role("link", name="Apps", exact=True).click()
    section = page.locator("section", has=page.get_by_role("heading", name=mine))
    expect(section.get_by_role("link", name="shop", exact=True)).to_be_visible()
    screenshot(page, "apps")
    # The dashboard itself may only list namespaces: alice's token made all this.
    assert revisions(cp, mine, "shop") == {1: "deployed"}
    deployment = get(cp, mine, "deployments", "shop")
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    service = get(cp, mine, "services", "shop")
    assert service is not None and service["spec"]["ports"][0]["port"] == 8080
    settings = get(cp, mine, "configmaps", "shop-settings")
    assert settings is not None
    assert settings["data"] == {"GREETING": "hi there", "TIER": "worker", "DEBUG": "true"}


def test_an_upgrade_shows_the_values_and_manifest_diffs_then_upgrades(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
    screenshot: Shoot,
) -> None:
    mine = world["mine"]
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "blog", {"replicaCount": 2})
    sign_in(world["alice"])
    page.get_by_role("link", name="blog", exact=True).click()
    page.get_by_role("link", name="Upgrade or change values").click()
    expect(page.get_by_role("heading", name="Upgrade blog")).to_be_visible()
    expect(page.get_by_label("Version")).to_have_value("1.1.0")  # the newest
    values = page.get_by_label("Values (YAML)")
    expect(values).to_have_value("replicaCount: 2\n")
    values.fill("replicaCount: 4\ngreeting: hello again\n")
    page.get_by_role("button", name="Show what changes").click()

    expect(page.get_by_role("heading", name="What changes", exact=True)).to_be_visible()
    values_diff = following_pre(page, "Values").inner_text()
    assert "-replicaCount: 2" in values_diff and "+replicaCount: 4" in values_diff
    assert "+greeting: hello again" in values_diff
    manifest_diff = following_pre(page, "Manifests").inner_text()
    assert "-  replicas: 2" in manifest_diff and "+  replicas: 4" in manifest_diff
    assert '+  EDITION: "1.1"' in manifest_diff
    assert '+  GREETING: "hello again"' in manifest_diff
    screenshot(page, "upgrade-preview")
    assert revisions(cp, mine, "blog") == {1: "deployed"}  # a preview changes nothing

    page.get_by_role("button", name="Upgrade", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/apps/{mine}/blog$"))
    expect(first_column(page, "History")).to_have_text(["2", "1"])
    assert revisions(cp, mine, "blog") == {1: "superseded", 2: "deployed"}
    deployment = get(cp, mine, "deployments", "blog")
    assert deployment is not None and deployment["spec"]["replicas"] == 4
    settings = get(cp, mine, "configmaps", "blog-settings")
    assert settings is not None
    assert settings["data"]["EDITION"] == "1.1" and settings["data"]["GREETING"] == "hello again"


def test_an_upgrade_may_give_only_the_values_that_change(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    mine = world["mine"]
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "notes", {})
    sign_in(world["alice"])
    page.goto(f"/apps/{mine}/notes/upgrade")
    page.get_by_label("Values (YAML)").fill("replicaCount: 3\n")  # greeting: the chart's
    with page.expect_response(posted(page, "/upgrade")) as answer:
        page.get_by_role("button", name="Show what changes").click()
    assert answer.value.status == 200
    expect(page.get_by_role("heading", name="What changes", exact=True)).to_be_visible()


def test_rolling_back_to_an_earlier_revision(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
    screenshot: Shoot,
) -> None:
    mine = world["mine"]
    first, second = {"replicaCount": 1}, {"replicaCount": 4, "greeting": "busy"}
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "wiki", first, second)
    sign_in(world["alice"])
    page.goto(f"/apps/{mine}/wiki")
    expect(following_pre(page, "Values")).to_contain_text("replicaCount: 4")
    expect(page.get_by_role("button", name="Roll back to 2")).to_have_count(0)  # the current
    page.get_by_role("button", name="Roll back to 1").click()

    expect(page.get_by_role("button", name="Roll back to 2")).to_be_visible()
    expect(first_column(page, "History")).to_have_text(["3", "2", "1"])
    expect(following_pre(page, "Values")).to_contain_text("replicaCount: 1")
    screenshot(page, "app")
    assert revisions(cp, mine, "wiki") == {1: "superseded", 2: "superseded", 3: "deployed"}
    deployment = get(cp, mine, "deployments", "wiki")
    assert deployment is not None and deployment["spec"]["replicas"] == 1
    settings = get(cp, mine, "configmaps", "wiki-settings")
    assert settings is not None and settings["data"]["GREETING"] == "hello"


def test_deleting_takes_the_release_name_typed(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    mine = world["mine"]
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "doomed", {})
    sign_in(world["alice"])
    page.goto(f"/apps/{mine}/doomed")
    confirm = page.get_by_label("Type the release's name")
    delete = page.get_by_role("button", name="Delete doomed")

    delete.click()  # nothing typed: the browser asks for it
    assert confirm.evaluate("el => el.validity.valueMissing") is True
    confirm.fill("doomd")
    with page.expect_response(posted(page, "/delete")) as answer:
        delete.click()
    assert answer.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text("Type the release's name to delete it")
    assert revisions(cp, mine, "doomed") == {1: "deployed"}

    page.get_by_label("Type the release's name").fill("doomed")
    page.get_by_role("button", name="Delete doomed").click()
    expect(page).to_have_url(re.compile(r"/apps$"))
    expect(page.get_by_role("link", name="doomed", exact=True)).to_have_count(0)
    assert revisions(cp, mine, "doomed") == {}
    for kind, name in (("deployments", "doomed"), ("services", "doomed")):
        assert get(cp, mine, kind, name) is None
    assert get(cp, mine, "configmaps", "doomed-settings") is None


def test_a_view_only_user_is_refused_clearly_and_the_app_stays_as_it_was(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    theirs = world["theirs"]
    admin_installs(
        cp, helm_binary, repo, tmp_path, theirs, "kept", {"replicaCount": 1}, {"replicaCount": 2}
    )
    before = revisions(cp, theirs, "kept")
    assert before == {1: "superseded", 2: "deployed"}
    sign_in(world["bob"])
    expect(page.get_by_role("heading", level=2)).to_have_text([f"{theirs} view only"])
    page.get_by_role("link", name="kept", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("kept")  # he may look
    # ... and is told he may not change it: no change is offered.
    expect(page.get_by_text("You may look at this app, not change it")).to_be_visible()
    for control in ("Upgrade or change values", "Roll back to 1", "Delete kept"):
        expect(page.get_by_text(control)).to_have_count(0)

    # Sent anyway (the forms' own requests, with the session's CSRF token): refused,
    # in words.
    csrf = page.locator('form[action="/signout"] input[name="csrf"]').get_attribute("value")
    assert csrf
    base = f"/apps/{theirs}/kept"
    answer = page.request.post(f"{base}/rollback", form={"csrf": csrf, "revision": "1"})
    assert answer.status == 403
    assert f"You may not roll back releases in {theirs}: " in answer.text()
    answer = page.request.post(f"{base}/delete", form={"csrf": csrf, "confirm": "kept"})
    assert answer.status == 403
    assert f"You may not delete releases in {theirs}: " in answer.text()
    page.goto(f"{base}/upgrade")
    page.get_by_label("Values (YAML)").fill("replicaCount: 5\ngreeting: hello\n")
    page.get_by_role("button", name="Show what changes").click()
    expect(page.get_by_role("heading", name="What changes", exact=True)).to_be_visible()
    with page.expect_response(posted(page, "/upgrade")) as response:
        page.get_by_role("button", name="Upgrade", exact=True).click()
    assert response.value.status == 403
    expect(page.get_by_role("alert").first).to_contain_text("forbidden")

    assert revisions(cp, theirs, "kept") == before
    deployment = get(cp, theirs, "deployments", "kept")
    assert deployment is not None and deployment["spec"]["replicas"] == 2


def test_a_view_only_user_cannot_deploy(
    page: Page, sign_in: SignIn, cp: ControlPlane, world: dict[str, str]
) -> None:
    theirs = world["theirs"]
    sign_in(world["bob"])
    page.goto(WEBAPP)
    expect(page.get_by_text("You may not deploy in any namespace")).to_be_visible()
    namespaces = page.get_by_label("Namespace")
    expect(namespaces.locator("option")).to_have_count(0)
    # Offered nothing, he picks his namespace anyway (as a hand-made request would).
    namespaces.evaluate("(s, ns) => s.add(new Option(ns, ns, true, true))", theirs)
    page.get_by_label("Release name").fill("sneaked")
    with page.expect_response(posted(page, "/deploy")) as answer:
        page.get_by_role("button", name="Deploy").click()
    assert answer.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("forbidden")
    assert revisions(cp, theirs, "sneaked") == {}
    assert get(cp, theirs, "deployments", "sneaked") is None


def test_a_chart_from_the_oci_registry_has_its_page_and_deploys(
    page: Page, sign_in: SignIn, cp: ControlPlane, world: dict[str, str]
) -> None:
    mine = world["mine"]
    sign_in(world["alice"])
    page.get_by_role("link", name="Catalog").click()
    search = page.get_by_role("searchbox", name="Search charts")
    search.fill("ocichart")
    search.press("Enter")
    expect(first_column(page, "Charts")).to_have_text(["ocichart"])
    page.get_by_role("link", name="ocichart").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("ocichart")
    expect(page.get_by_text("size: 1")).to_be_visible()  # its default values
    page.get_by_role("link", name="Deploy 2.0.0").click()
    page.get_by_label("Release name").fill("from-oci")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/apps/{mine}/from-oci$"))
    assert revisions(cp, mine, "from-oci") == {1: "deployed"}


def test_the_form_and_the_yaml_editor_stay_in_step(
    page: Page, sign_in: SignIn, world: dict[str, str]
) -> None:
    sign_in(world["alice"])
    page.goto(WEBAPP)
    values = page.get_by_label("The chart's values; the form's fields are part of them.")
    page.get_by_label("Replicas").fill("4")
    expect(values).to_have_value(re.compile(r"^replicaCount: 4$", re.M))
    expect(values).to_have_value(re.compile(r"^greeting: hello$", re.M))  # the rest stays
    page.get_by_label("Tier").select_option("worker")
    expect(values).to_have_value(re.compile(r"^tier: worker$", re.M))
    # The YAML edited: the fields follow, and the schema's complaint shows at its field.
    values.fill("replicaCount: 9\ngreeting: typed in yaml\ntier: web\n")
    expect(page.get_by_label("Replicas")).to_have_value("9")
    expect(page.get_by_label("Greeting")).to_have_value("typed in yaml")
    expect(page.locator('[data-error-for="replicaCount"]')).to_have_text(
        re.compile("9 is greater than the maximum of 5")
    )
    values.fill("replicaCount: 2\ngreeting: fine\n")
    expect(page.locator('[data-error-for="replicaCount"]')).to_be_hidden()
    expect(page.get_by_label("Replicas")).to_have_value("2")


def test_a_release_made_with_the_helm_cli_appears_without_a_reload(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
) -> None:
    mine = world["mine"]
    sign_in(world["alice"])
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))
    section = page.locator("section", has=page.get_by_role("heading", name=mine))
    expect(section).to_be_visible()
    expect(section.get_by_role("link", name="live-cli", exact=True)).to_have_count(0)
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "live-cli", {"replicaCount": 1})
    expect(section.get_by_role("link", name="live-cli", exact=True)).to_be_visible()
    assert loads == []  # the page was not loaded again: the list followed the cluster


def test_the_services_panel_matches_explain_and_follows_an_endpointslice(
    page: Page,
    sign_in: SignIn,
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    world: dict[str, str],
    tmp_path: Path,
    screenshot: Shoot,
) -> None:
    mine = world["mine"]
    admin_installs(cp, helm_binary, repo, tmp_path, mine, "netpanel", {"replicaCount": 2})
    path = f"/apis/discovery.k8s.io/v1/namespaces/{mine}/endpointslices"
    ok(cp, "POST", path, endpoint_slice(mine, "netpanel", ["10.244.1.5", "10.244.1.6"]))
    sign_in(world["alice"])
    page.goto(f"/apps/{mine}/netpanel")
    objects = service_with_slices(cp, mine, "netpanel")
    cluster_ip = objects[0]["spec"]["clusterIP"]
    panel = page.get_by_role("table", name=f"ClusterIP {cluster_ip}:80/TCP")

    def shown() -> dict[str, str]:
        rows = panel.locator("tr.share").all()
        cells = [row.locator("td").all_inner_texts() for row in rows]
        return {endpoint: chance for chance, endpoint, _masquerade in cells}

    expect(panel.locator("tr.share")).to_have_count(2)
    # No node is known to the dashboard here: explain as a client outside the pod network.
    assert shown() == explain_cli(objects, tmp_path, f"{cluster_ip}:80/tcp")
    assert shown() == {"10.244.1.5:8080": "50.0%", "10.244.1.6:8080": "50.0%"}
    expect(page.get_by_role("row", name="Deployment netpanel 0/2 ready")).to_be_visible()
    screenshot(page, "app-network")
    # The EndpointSlice gains an endpoint: the panel follows without a reload.
    current = cp.request("GET", f"{path}/netpanel-live")[1]
    current["endpoints"] = endpoint_slice(
        mine, "netpanel", ["10.244.1.5", "10.244.1.6", "10.244.1.7"]
    )["endpoints"]
    ok(cp, "PUT", f"{path}/netpanel-live", current, want=200)
    expect(panel.locator("tr.share")).to_have_count(3)
    expect(panel.locator("tr.share").first.locator("td").first).to_have_text("33.3%")
    objects = service_with_slices(cp, mine, "netpanel")
    assert shown() == explain_cli(objects, tmp_path, f"{cluster_ip}:80/tcp")


def test_a_deploy_preview_shows_the_network_change_first(
    page: Page, sign_in: SignIn, cp: ControlPlane, world: dict[str, str], screenshot: Shoot
) -> None:
    mine = world["mine"]
    sign_in(world["alice"])
    page.goto(WEBAPP)
    page.get_by_label("Release name").fill("previewed")
    page.get_by_label("Service port").fill("8081")
    page.get_by_role("button", name="Show what changes on the network").click()
    preview = page.get_by_role("region", name="What changes on the network")
    expect(preview.get_by_role("heading", name="Service previewed new")).to_be_visible()
    expect(preview.get_by_text("ports 8081/TCP")).to_be_visible()
    expect(preview.get_by_text("a ClusterIP the cluster assigns at install")).to_be_visible()
    screenshot(page, "deploy-preview")
    status, _ = cp.request("GET", f"/api/v1/namespaces/{mine}/services/previewed")
    assert status == 404  # a preview installs nothing
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/apps/{mine}/previewed$"))
    assert revisions(cp, mine, "previewed") == {1: "deployed"}
