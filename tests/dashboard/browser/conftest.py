"""The dashboard in a real browser: headless Debian chromium (/usr/bin/chromium, apt package
`chromium`) driven by Playwright's sync API, never a browser Playwright downloads. The
dashboard is `nftproxy dashboard` itself, run with the identity deploy/dashboard gives it
(it may list namespaces, nothing else: whatever the cluster then holds, a user's own token
made), against a real kube-apiserver and a chart repository on loopback.

Without playwright or chromium these tests skip, naming what is missing; under CI=true
they fail instead. With NFTPROXY_SCREENSHOTS=<dir> they save full-page screenshots of the
main pages there, as docs/screenshots/ was made:

    NFTPROXY_SCREENSHOTS=$PWD/docs/screenshots .venv/bin/pytest tests/dashboard/browser
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nftproxy.dashboard.helm import Helm
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo, write_chart
from tests.dashboard.oci_registry import OciRegistry
from tests.support.dashboard import dashboard_identity, serve_dashboard
from tests.support.users import VIEW, grant, namespace

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

VIEWPORT: Any = {"width": 1280, "height": 800}
TIMEOUT_MS = 30_000  # a page that runs helm may take seconds on a busy machine

# A chart like an app's: a Deployment, its Service and settings, a schema for the form.
WEBAPP_SCHEMA = {
    "type": "object",
    "required": ["replicaCount", "greeting"],
    "properties": {
        "replicaCount": {
            "type": "integer",
            "minimum": 1,
            "maximum": 5,
            "title": "Replicas",
            "description": "pods of the web server, 1 to 5",
        },
        "greeting": {
            "type": "string",
            "minLength": 1,
            "maxLength": 40,
            "pattern": "^[A-Za-z ]+$",
            "title": "Greeting",
            "description": "letters and spaces",
        },
        "tier": {"enum": ["web", "worker"], "title": "Tier"},
        "debug": {"type": "boolean", "title": "Debug logging"},
        "service": {
            "type": "object",
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535, "title": "Service port"}
            },
        },
    },
}
WEBAPP_VALUES = """\
replicaCount: 1
greeting: hello
tier: web
debug: false
service:
  port: 80
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
        - name: web
          image: webapp:{{ .Chart.AppVersion }}
          envFrom:
            - configMapRef:
                name: {{ .Release.Name }}-settings
          ports:
            - containerPort: 8080
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
    - port: {{ .Values.service.port }}
      targetPort: 8080
"""
SETTINGS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  GREETING: {{ .Values.greeting | quote }}
  TIER: {{ .Values.tier | quote }}
  DEBUG: {{ .Values.debug | quote }}
"""
NOTES = "{{ .Release.Name }} answers on port {{ .Values.service.port }} of its Service.\n"


def _needed(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: not skipped)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: $NFTPROXY_CHROMIUM, else `chromium` on PATH."""
    found = os.environ.get("NFTPROXY_CHROMIUM") or shutil.which("chromium")
    if not found or not os.access(found, os.X_OK):
        _needed("the browser tests need Debian's chromium: apt-get install chromium")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _needed("the browser tests need playwright: pip install -e '.[dev]'")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium: str) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium, headless=True)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def repo(repo: HttpChartRepo, tmp_path_factory: pytest.TempPathFactory) -> HttpChartRepo:
    """The dashboard tests' charts, and webapp 1.0.0 and 1.1.0 (1.1.0 adds a setting)."""
    src = tmp_path_factory.mktemp("webapp")
    schema = json.dumps(WEBAPP_SCHEMA)
    templates = {
        "deployment.yaml": DEPLOYMENT,
        "service.yaml": SERVICE,
        "settings.yaml": SETTINGS,
        "NOTES.txt": NOTES,
    }
    newer = {**templates, "settings.yaml": SETTINGS + '  EDITION: "1.1"\n'}
    repo.publish(
        [
            write_chart(
                src, "webapp", "1.0.0", values=WEBAPP_VALUES, schema=schema, templates=templates
            ),
            write_chart(
                src, "webapp", "1.1.0", values=WEBAPP_VALUES, schema=schema, templates=newer
            ),
        ]
    )
    return repo


@pytest.fixture(scope="module")
def world(world: dict[str, str], cp: ControlPlane) -> dict[str, str]:
    """The dashboard tests' world (alice deploys in "mine", bob only looks at "theirs"),
    and a namespace "shared" where alice may only look."""
    shared = namespace(cp)
    grant(cp, shared, (world["mine"], "alice"), f"alice-from-{world['mine']}", VIEW)
    return {**world, "shared": shared}


@pytest.fixture(scope="module")
def oci_repo(
    oci_registry: OciRegistry, packager: Helm, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An OCI registry with one chart, `ocichart` 2.0.0: the dashboard's name for it."""
    src = tmp_path_factory.mktemp("oci")
    oci_registry.push(packager, [write_chart(src, "ocichart", "2.0.0", values="size: 1\n")])
    return oci_registry.url()


@pytest.fixture(scope="module")
def dashboard(
    cp: ControlPlane,
    helm_binary: Path,
    repo: HttpChartRepo,
    oci_repo: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """`nftproxy dashboard` on loopback, as deployed, with an HTTP repository (main) and
    an OCI one (lab): its base URL."""
    where = tmp_path_factory.mktemp("dashboard")
    token = dashboard_identity(cp, namespace(cp))
    kubeconfig = cp.kubeconfig(where / "kubeconfig", token)
    repos = [f"main={repo.url}", f"lab={oci_repo}"]
    with serve_dashboard(kubeconfig, helm_binary, repos, where / "log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, dashboard: str) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the dashboard, 1280 pixels wide."""
    context = browser.new_context(base_url=dashboard, viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def sign_in(page: Page) -> Callable[[str], None]:
    """Sign in with a token as a person does: the sign-in page, the token pasted."""

    def enter(token: str) -> None:
        page.goto("/signin")
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/apps")

    return enter


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Any, str], None]:
    """shoot(page, name): a full-page PNG of what the page shows now, into
    $NFTPROXY_SCREENSHOTS/<name>.png; nothing when that is not set."""
    where = os.environ.get("NFTPROXY_SCREENSHOTS")

    def shoot(page: Any, name: str) -> None:
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)

    return shoot
