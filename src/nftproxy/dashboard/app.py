"""The dashboard's web application (Starlette, Jinja2 with autoescape): sign-in with the
user's own token, sessions held server-side, a CSRF token on every change, and the pages.
Every call to the cluster is made with the signed-in user's token."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import jinja2
import yaml
from markdown_it import MarkdownIt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nftproxy.dashboard.access import BadToken, NamespaceAccess, UserAccess
from nftproxy.dashboard.catalog import Catalog, ChartVersion, RepoConfig
from nftproxy.dashboard.charts import ChartFiles, ChartReadError, fetch_archive, read_archive
from nftproxy.dashboard.forms import MAX_FIELDS, coalesced, values_from_form
from nftproxy.dashboard.forms import fields as form_fields
from nftproxy.dashboard.forms import validate as validate_values
from nftproxy.dashboard.helm import (
    ApiServer,
    Credentials,
    Helm,
    HelmError,
    check_namespace,
    check_release_name,
)
from nftproxy.dashboard.network import (
    node_health,
    node_infos,
    preview,
    service_networks,
    sync_state,
)
from nftproxy.dashboard.releases import ReleaseDetail, ReleaseError, ReleaseReader
from nftproxy.dashboard.resources import ObjectRef, live_resources, object_refs
from nftproxy.kube.client import ApiError
from nftproxy.sources.manifests import ReadLimits, read_yaml_document

__all__ = [
    "MAX_FORM_BYTES",
    "SECURITY_HEADERS",
    "DashboardConfig",
    "Session",
    "Sessions",
    "cookie_name",
    "create_app",
    "memo",
    "render_markdown",
    "streamer",
    "valid_token",
]

log = logging.getLogger("nftproxy.dashboard")

MAX_TOKEN_CHARS = 16_384
MAX_FORM_BYTES = 64 << 10
MAX_DEPLOY_FORM_BYTES = 1 << 20  # the values YAML rides along
CHART_CACHE = 64
MAX_SESSIONS = 10_000
MAX_SESSIONS_PER_USER = 16
CATALOG_REFRESH = 300.0
NAMESPACES_TTL = 10.0  # the dashboard's own list of namespaces
ACCESS_TTL = 30.0  # a user's rights, as access reviews answered them
HEALTH_TTL = 5.0  # the nodes' proxy health answers
PARSED_MANIFESTS = 16
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
LIVE_MAX = 600.0  # a live page's stream ends after this; the browser opens another
LIVE_KEEPALIVE = 15.0
LIVE_PER_USER = 8
LIVE_RENDERS = 8  # live parts rendered at once, beside the page threads
LIVE_STREAMS = 1000
# What a live part may run into with content anyone who may write a Secret or an object
# controls: shown as a message in its place, never as a trace.
LIVE_PROBLEMS = (ApiError, BadToken, ReleaseError, ValueError, TypeError, KeyError, RecursionError)
# Pages hold a CSRF token and the user's name: not cached, not framed, no foreign scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TOKEN = re.compile(rf"[!-~]{{1,{MAX_TOKEN_CHARS}}}")


def valid_token(text: str) -> bool:
    """A bearer token is printable ASCII without spaces; anything else is refused before it
    reaches an HTTP header (where a line break would end up in an error message)."""
    return _TOKEN.fullmatch(text) is not None


VALUES_LIMITS = ReadLimits(max_file_bytes=MAX_DEPLOY_FORM_BYTES, max_document_chars=4 << 20)


def _yaml(values: Mapping[str, Any], original: str) -> str:
    """The values as the YAML editor shows them: the chart's own text while unchanged."""
    if original:
        try:
            if read_yaml_document(original.encode(), VALUES_LIMITS) == dict(values):
                return original
        except ValueError:
            pass
    return yaml.safe_dump(dict(values), sort_keys=False, default_flow_style=False)


def read_values(
    answers: Mapping[str, str], files: ChartFiles, source: str, base: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a deploy or upgrade form gives: from its YAML editor, or its fields over
    `base`; then checked against the chart's schema. Errors by field name."""
    errors: dict[str, str] = {}
    if source == "yaml":
        try:
            parsed = read_yaml_document(answers.get("values_yaml", "").encode(), VALUES_LIMITS)
        except ValueError as exc:
            return {}, {"values_yaml": f"not YAML the chart can take: {exc}"}
        if parsed is not None and not isinstance(parsed, dict):
            return {}, {"values_yaml": "the values must be a mapping"}
        values: dict[str, Any] = parsed or {}
    else:
        # The YAML editor holds what the form cannot show; the form's answers go over it.
        try:
            held = read_yaml_document(answers.get("values_yaml", "").encode(), VALUES_LIMITS)
        except ValueError:
            held = None
        values, errors = values_from_form(
            files.schema or {}, answers, held if isinstance(held, dict) else base, files.values
        )
    if not errors and files.schema:
        # helm renders with the chart's defaults under the values given: so is the schema.
        errors.update(validate_values(files.schema, coalesced(files.values, values)))
    return values, errors


MAX_DIFF_CHARS = 256 << 10


MAX_DIFFED_CHARS = 1 << 20  # both sides together: difflib's time grows faster than that


def _diff(before: str, after: str, what: str) -> str:
    """A unified diff, cut at MAX_DIFF_CHARS (saying so)."""
    if len(before) + len(after) > MAX_DIFFED_CHARS:
        return (
            f"(the {what} are too large to compare here: {len(before) + len(after):,} characters)\n"
        )
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{what} now",
        tofile=f"{what} after",
    )
    text = "".join(lines)
    if len(text) > MAX_DIFF_CHARS:
        return text[:MAX_DIFF_CHARS] + "\n... (the rest is not shown)\n"
    return text


_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
MAX_README_CHARS = 256 << 10


def render_markdown(text: str) -> str:
    """A chart's README as HTML without any of its own markup: raw HTML in it is shown as
    text, and links to javascript:, vbscript:, file: and data: are not made (markdown-it's
    own link check). The page's CSP keeps images from other hosts out."""
    html: str = _MARKDOWN.render(text[:MAX_README_CHARS])
    return html


def cookie_name(base: str, secure: bool) -> str:
    """`__Host-` cookies (TLS only, this host only, path /) cannot be planted by a
    neighbouring subdomain."""
    return f"__Host-{base}" if secure else base


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    server: ApiServer  # where users' own calls go
    helm: Path
    homes: Path  # per-user helm homes
    namespaces: Callable[[], list[str]]  # candidate namespaces, listed by the dashboard itself
    repos: tuple[RepoConfig, ...] = ()
    # An authenticating proxy's header with the user's token. Only safe when the dashboard
    # is reachable through that proxy alone, and the proxy sets the header on every request.
    token_header: str | None = None
    secure_cookies: bool = False  # served over TLS (here or at the proxy)
    session_idle: float = 1800.0
    session_max: float = 8 * 3600.0
    # The Node objects (API JSON), listed by the dashboard itself: the network panel
    # compiles each app's Services for every node.
    nodes: Callable[[], list[dict[str, Any]]] = list
    # Each node's proxy health endpoint ({address}: the node's first InternalIP).
    proxy_health: str = "http://{address}:10256/healthz"
    cluster_cidrs: tuple[str, ...] = ()  # the pod network, as the proxies are told
    # Every Service of the cluster (API JSON), listed by the dashboard itself: a network
    # preview names what an install would take from another Service.
    services: Callable[[], list[dict[str, Any]]] = list
    live_interval: float = 2.0  # seconds between looks for live pages


@dataclass(slots=True)
class Session:
    id: str = field(repr=False)
    user: Credentials
    username: str
    csrf: str = field(repr=False)
    created: float
    last_seen: float
    # Answers remembered for a while (rights, say): key -> (when, value).
    memo: dict[str, tuple[float, Any]] = field(default_factory=dict, repr=False)


class Sessions:
    """Signed-in users, in memory only: a token lives as long as its session."""

    def __init__(
        self,
        idle: float,
        lifetime: float,
        *,
        limit: int = MAX_SESSIONS,
        per_user: int = MAX_SESSIONS_PER_USER,
        clock: Callable[[], float] = time.monotonic,
        on_remove: Callable[[Credentials], None] = lambda _user: None,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self.per_user = per_user
        self.clock = clock
        self.on_remove = on_remove
        self._removed: list[Credentials] = []
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._by_user: dict[str, str] = {}  # Credentials.key -> session id (proxy mode)

    def new(self, user: Credentials, username: str) -> Session:
        now = self.clock()
        session = Session(
            secrets.token_urlsafe(32), user, username, secrets.token_urlsafe(32), now, now
        )
        with self._locked():
            self._expire(now)
            # One user signing in again and again pushes out their own sessions, not others'.
            theirs = sorted(
                (s for s in self._by_id.values() if s.user.key == user.key),
                key=lambda s: s.last_seen,
            )
            for old in theirs[: max(0, len(theirs) - self.per_user + 1)]:
                self._remove(old.id)
            while len(self._by_id) >= self.limit:  # the least recently used goes
                oldest = min(self._by_id.values(), key=lambda s: s.last_seen)
                self._remove(oldest.id)
            self._by_id[session.id] = session
            self._by_user[user.key] = session.id
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self.clock()
        with self._locked():
            self._expire(now)
            session = self._by_id.get(session_id)
            if session is not None:
                session.last_seen = now
            return session

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock; sessions removed under it are told of (on_remove) once it is free:
        closing a user's connections takes other locks."""
        with self._lock:
            yield
            removed, self._removed = self._removed, []
        for user in removed:
            self.on_remove(user)

    def peek(self, session_id: str) -> Session | None:
        """The session if it is still valid, without counting this as the user's activity
        (a live page open in a tab does not keep a session from going idle)."""
        now = self.clock()
        with self._locked():
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self.idle or now - session.created > self.lifetime:
                self._remove(session_id)
                return None
            return session

    def of_user(self, user: Credentials) -> Session | None:
        with self._locked():
            session_id = self._by_user.get(user.key)
        return self.get(session_id)

    def drop(self, session_id: str) -> None:
        with self._locked():
            self._remove(session_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def _expire(self, now: float) -> None:
        for s in list(self._by_id.values()):
            if now - s.last_seen > self.idle or now - s.created > self.lifetime:
                self._remove(s.id)

    def _remove(self, session_id: str) -> None:
        session = self._by_id.pop(session_id, None)
        if session is None:
            return
        if self._by_user.get(session.user.key) == session_id:
            del self._by_user[session.user.key]
        self._removed.append(session.user)  # told after the lock is released


_T = TypeVar("_T")


# Striped: a lock per answer would grow with the sessions. `ask` must not call memo itself.
_MEMO_LOCKS = tuple(threading.Lock() for _ in range(64))


def memo(store: dict[str, tuple[float, Any]], key: str, ttl: float, ask: Callable[[], _T]) -> _T:
    """`ask()`'s answer, remembered in `store` for `ttl` seconds from when it came. One
    caller asks at a time; while it does, the others get the answer before (when there is
    one), so a slow answer (a node that does not reply) is not asked for by every page."""
    kept = store.get(key)
    if kept is not None and time.monotonic() - kept[0] < ttl:
        value: _T = kept[1]
        return value
    lock = _MEMO_LOCKS[hash((id(store), key)) % len(_MEMO_LOCKS)]
    if not lock.acquire(blocking=kept is None):
        assert kept is not None
        stale: _T = kept[1]
        return stale
    try:
        again = store.get(key)
        if again is not None and again is not kept and time.monotonic() - again[0] < ttl:
            fresh: _T = again[1]
            return fresh
        answer = ask()
        store[key] = (time.monotonic(), answer)
        return answer
    finally:
        lock.release()


def streamer(username: str) -> str:
    """Whom live streams are counted for: the user, and all service accounts of one
    namespace as one (whoever may mint their tokens holds them all)."""
    parts = username.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return ":".join(parts[:3])
    return username


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class _FormTooLarge(Exception):
    pass


async def _small_form(
    request: Request, limit: int = MAX_FORM_BYTES, max_fields: int = 8
) -> FormData:
    """The urlencoded form of a request, refused beyond `limit` bytes before it is read."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    length = request.headers.get("content-length", "")
    if kind != "application/x-www-form-urlencoded" or not length.isdigit():
        raise _FormTooLarge
    if int(length) > limit:
        raise _FormTooLarge
    return await request.form(max_files=0, max_fields=max_fields, max_part_size=limit)


def create_app(config: DashboardConfig) -> Starlette:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates = Jinja2Templates(env=env)
    releases_reader = ReleaseReader(config.server)
    sessions = Sessions(config.session_idle, config.session_max, on_remove=releases_reader.forget)
    helm = Helm(config.helm, config.server, config.homes)
    catalog = Catalog(config.repos)
    shared_memo: dict[str, tuple[float, Any]] = {}
    refreshed: list[float] = []
    catalog_lock = threading.Lock()
    session_cookie = cookie_name("nftproxy_session", config.secure_cookies)
    signin_cookie = cookie_name("nftproxy_signin", config.secure_cookies)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("session", None)
        response: Response = templates.TemplateResponse(request, name, context, status_code=status)
        return response

    def error(request: Request, title: str, message: str, status: int, **context: Any) -> Response:
        return page(request, "error.html", status, title=title, message=message, **context)

    def set_cookie(response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name, value, httponly=True, samesite="strict", secure=config.secure_cookies, path="/"
        )

    def current(request: Request, *, touch: bool = True) -> Session | None:
        """The signed-in user. Behind an authenticating proxy, its header says who on every
        request (a cookie from someone before never does); else the session cookie. Without
        `touch` the request does not count as the user's activity."""
        if not config.token_header:
            cookie = request.cookies.get(session_cookie)
            if not touch:
                return sessions.peek(cookie) if cookie else None
            return sessions.get(cookie)
        token = request.headers.get(config.token_header, "").removeprefix("Bearer ").strip()
        if not valid_token(token):
            return None
        user = Credentials(token)
        session = sessions.of_user(user)
        if session is not None:
            return session
        try:
            name = UserAccess(config.server, user).username()
        except (BadToken, ApiError):
            return None
        return sessions.new(user, name)

    def signed_in(handler: Callable[[Request, Session], Response]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            # The cluster and helm are called synchronously: off the event loop.
            session = await run_in_threadpool(current, request)
            if session is None:
                return RedirectResponse("/signin", status_code=303)
            return await run_in_threadpool(handler, request, session)

        return endpoint

    async def healthz(request: Request) -> Response:
        """For probes: the server answers; no session, no call to the cluster."""
        return Response("ok\n", media_type="text/plain")

    async def home(request: Request) -> Response:
        return RedirectResponse("/apps", status_code=303)

    def signin_page(request: Request, status: int = 200, problem: str | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "signin.html", status, csrf=token, error=problem)
        set_cookie(response, signin_cookie, token)
        return response

    async def signin_form(request: Request) -> Response:
        return signin_page(request)

    async def signin(request: Request) -> Response:
        try:
            form = await _small_form(request)
        except _FormTooLarge:
            return error(request, "Refused", "The form is not one this page sends.", 413)
        if not _same(str(form.get("csrf", "")), request.cookies.get(signin_cookie)):
            return error(request, "Refused", "The form has expired: sign in again.", 403)
        token = str(form.get("token", "")).strip()
        if not token:
            return signin_page(request, 400, "Paste a token to sign in.")
        if not valid_token(token):
            return signin_page(request, 400, "That is not a token: printable characters only.")
        user = Credentials(token)
        try:
            name = await run_in_threadpool(UserAccess(config.server, user).username)
        except BadToken as exc:
            return signin_page(request, 401, f"Not signed in: {exc}.")
        except ApiError as exc:
            log.warning("sign-in: the API server could not be asked: %s", exc)
            return signin_page(request, 503, "The cluster cannot be asked right now; try again.")
        old = request.cookies.get(session_cookie)
        if old:
            sessions.drop(old)
        session = sessions.new(user, name)
        log.info("signed in: %s", name)
        response = RedirectResponse("/apps", status_code=303)
        set_cookie(response, session_cookie, session.id)
        response.delete_cookie(signin_cookie, path="/", secure=config.secure_cookies)
        return response

    async def signout(request: Request) -> Response:
        session = await run_in_threadpool(current, request)
        try:
            form = await _small_form(request)
        except _FormTooLarge:
            return error(request, "Refused", "The form is not one this page sends.", 413)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        if not _same(str(form.get("csrf", "")), session.csrf):
            return error(request, "Refused", "The form has expired: reload the page.", 403)
        sessions.drop(session.id)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(session_cookie, path="/", secure=config.secure_cookies)
        return response

    def candidates() -> list[str]:
        """The namespaces the dashboard knows of (its own listing), asked again every
        NAMESPACES_TTL seconds."""
        return memo(shared_memo, "namespaces", NAMESPACES_TTL, config.namespaces)

    def deployable(session: Session) -> set[str]:
        """Where the user may deploy (create Secrets, where helm keeps releases); asked once
        for the whole cluster, else per namespace, and remembered for ACCESS_TTL seconds."""

        names = candidates()

        def ask() -> set[str]:
            client = releases_reader.client(session.user)
            access = UserAccess(config.server, session.user, client=client)
            if access.can("create", "secrets", ""):
                return set(names)
            return access.allowed("create", "secrets", names)

        return memo(session.memo, "deploy", ACCESS_TTL, ask)

    def app_list(session: Session) -> dict[str, Any]:
        """What the app list shows the user: namespaces they may see, their releases, and
        an upgrade badge where a configured repository has a newer chart version."""
        refresh_catalog()
        found = releases_reader.current(session.user, candidates())
        may_deploy = deployable(session)
        # A namespace that failed to answer (overload, a timeout) is not named: the
        # candidates are every namespace of the cluster, not only the user's.
        namespaces = [
            NamespaceAccess(ns, view=True, deploy=ns in may_deploy)
            for ns in sorted(found.by_namespace)
        ]
        namespaces += [
            NamespaceAccess(ns, view=False, deploy=True)
            for ns in sorted(may_deploy & found.refused)
        ]
        upgrades = {
            (r.namespace, r.name): newer.version
            for listed in found.by_namespace.values()
            for r in listed
            if (newer := newest_chart(r.chart, r.chart_version)) is not None
        }
        return {
            "namespaces": namespaces,
            "releases": found.by_namespace,
            "unanswered": len(found.problems),
            "upgrades": upgrades,
        }

    def newest_chart(chart: str, version: str) -> ChartVersion | None:
        for repo in config.repos:
            newer = catalog.newer(repo.name, chart, version)
            if newer is not None:
                return newer
        return None

    def apps(request: Request, session: Session) -> Response:
        try:
            shown = app_list(session)
        except BadToken as exc:
            sessions.drop(session.id)
            return error(request, "Signed out", f"{exc}: sign in again.", 401)
        except ApiError as exc:
            if exc.status == 401:
                sessions.drop(session.id)
                return error(
                    request,
                    "Signed out",
                    "The cluster no longer accepts your token: sign in again.",
                    401,
                )
            log.warning("apps of %s: %s", session.username, exc)
            return error(request, "Cluster unavailable", exc.message, 503, session=session)
        return page(
            request,
            "apps.html",
            session=session,
            listing=fragment("apps_list.html", **shown),
            **shown,
        )

    def refresh_catalog() -> dict[str, str]:
        """Refresh when due; while one request refreshes, the others serve what is cached."""
        if not catalog_lock.acquire(blocking=False):
            return {}
        try:
            now = time.monotonic()
            if not refreshed or now - refreshed[-1] > CATALOG_REFRESH:
                refreshed[:] = [now]
                return catalog.refresh()
            return {}
        finally:
            catalog_lock.release()

    def catalog_page(request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "")[:200]
        errors = refresh_catalog()
        return page(
            request,
            "catalog.html",
            session=session,
            query=query,
            found=catalog.search(query),
            errors=errors,
        )

    def chart_page(request: Request, session: Session) -> Response:
        repo, chart = str(request.path_params["repo"]), str(request.path_params["chart"])
        refresh_catalog()
        versions = catalog.versions(repo, chart)
        if not versions:
            return error(request, "No such chart", f"{repo}/{chart[:100]}", 404, session=session)
        version = request.query_params.get("version") or versions[0].version
        try:
            _, listed, files = chart_files(repo, chart, version)
        except ChartReadError as exc:
            return error(request, "Chart unavailable", str(exc), 404, session=session)
        return page(
            request,
            "chart.html",
            session=session,
            repo=repo,
            chart=listed,
            versions=versions,
            readme=render_markdown(files.readme),
            values_yaml=files.values_yaml,
            has_schema=bool(files.schema),
        )

    chart_cache: dict[tuple[str, str, str], tuple[RepoConfig, ChartVersion, ChartFiles]] = {}
    chart_lock = threading.Lock()

    def chart_files(
        repo: str, name: str, version: str
    ) -> tuple[RepoConfig, ChartVersion, ChartFiles]:
        """A chart version the catalog lists, its archive fetched and read once."""
        key = (repo, name, version)
        with chart_lock:
            if key in chart_cache:
                return chart_cache[key]
        refresh_catalog()
        config_repo = next((r for r in config.repos if r.name == repo), None)
        listed = next((v for v in catalog.versions(repo, name) if v.version == version), None)
        if config_repo is None or listed is None:
            raise ChartReadError(f"{repo}/{name} {version}: not in the catalog")
        found = (config_repo, listed, read_archive(fetch_archive(config_repo, listed)))
        with chart_lock:
            if len(chart_cache) >= CHART_CACHE:
                chart_cache.pop(next(iter(chart_cache)))
            chart_cache[key] = found
        return found

    def deploy_page(
        request: Request,
        session: Session,
        picked: tuple[RepoConfig, ChartVersion, ChartFiles],
        *,
        values: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        release: str = "",
        namespace: str = "",
        source: str = "form",
        values_yaml: str | None = None,
        status: int = 200,
        network: dict[str, Any] | None = None,
    ) -> Response:
        repo, listed, files = picked
        try:
            namespaces = sorted(deployable(session))
        except (BadToken, ApiError) as exc:
            log.warning("deploy page of %s: %s", session.username, exc)
            namespaces = []  # the form says so; submitting it shows the cluster's answer
        shown = dict(values if values is not None else files.values)
        return page(
            request,
            "deploy.html",
            status,
            session=session,
            repo=repo.name,
            chart=listed,
            fields=form_fields(files.schema, shown) if files.schema else [],
            values_yaml=values_yaml if values_yaml is not None else _yaml(shown, files.values_yaml),
            namespaces=namespaces,
            namespace=namespace or (namespaces[0] if namespaces else ""),
            release=release,
            source=source,
            errors=dict(errors or {}),
            network=network,
        )

    def deploy_form(request: Request, session: Session) -> Response:
        params = request.query_params
        try:
            picked = chart_files(
                params.get("repo", ""), params.get("chart", ""), params.get("version", "")
            )
        except ChartReadError as exc:
            return error(request, "Chart unavailable", str(exc), 404, session=session)
        return deploy_page(request, session, picked)

    def deploy(request: Request, session: Session, form: FormData) -> Response:
        answers = {k: str(v) for k, v in form.items()}
        try:
            picked = chart_files(
                answers.get("repo", ""), answers.get("chart", ""), answers.get("version", "")
            )
        except ChartReadError as exc:
            return error(request, "Chart unavailable", str(exc), 404, session=session)
        repo, listed, files = picked
        release, namespace = answers.get("release", "").strip(), answers.get("namespace", "")
        source = "yaml" if answers.get("source") == "yaml" else "form"
        errors: dict[str, str] = {}
        for name, check in (("release", check_release_name), ("namespace", check_namespace)):
            try:
                check(release if name == "release" else namespace)
            except ValueError as exc:
                errors[name] = str(exc)
        forbidden = not errors and not may_change(session, namespace)
        if forbidden:
            errors["namespace"] = (
                f"deploying in {namespace} is forbidden to you: your rights there do not "
                "allow to create Secrets, where helm keeps releases"
            )
        if not errors:
            try:
                existing = releases_reader.history(session.user, namespace, release).latest
            except ApiError:
                existing = None  # not allowed to look: helm answers when it installs
            if existing is not None and existing.release.status != "uninstalled":
                errors["release"] = (
                    f"{release} already exists in {namespace}: upgrade it from its page, "
                    "or choose another name"
                )
        values, value_errors = read_values(answers, files, source, files.values)
        errors.update(value_errors)
        again: dict[str, Any] = {"release": release, "namespace": namespace, "source": source}
        if errors:
            yaml_text = answers.get("values_yaml") if source == "yaml" else None
            return deploy_page(
                request,
                session,
                picked,
                values=values,
                errors=errors,
                values_yaml=yaml_text,
                status=403 if forbidden else 422,
                **again,
            )
        if answers.get("action") == "preview":
            try:
                rendered = helm.template(
                    release, listed.name, namespace, values, version=listed.version, repo=repo.url
                )
            except HelmError as exc:
                rendered, problem = "", exc.message
            else:
                problem = ""
            yaml_text = answers.get("values_yaml") if source == "yaml" else None
            return deploy_page(
                request,
                session,
                picked,
                values=values,
                values_yaml=yaml_text,
                errors={"": problem} if problem else {},
                network=network_preview(session, namespace, rendered, "") if rendered else None,
                **again,
            )
        try:
            helm.install(
                session.user,
                release,
                listed.name,
                namespace,
                values,
                version=listed.version,
                repo=repo.url,
            )
        except HelmError as exc:
            status = 403 if exc.forbidden else 422
            return deploy_page(
                request,
                session,
                picked,
                values=values,
                errors={"": exc.message},
                status=status,
                **again,
            )
        log.info(
            "%s deployed %s/%s %s as %s in %s",
            session.username,
            repo.name,
            listed.name,
            listed.version,
            release,
            namespace,
        )
        # To the new app: its objects and network come up there.
        return RedirectResponse(f"/apps/{namespace}/{release}", status_code=303)

    def values_sync(request: Request, session: Session, form: FormData) -> Response:
        """Keeps a values form and its YAML editor in step: the form's answers put into the
        YAML (keeping what only the YAML holds), or the YAML's values shown in the form;
        either way checked against the chart's schema, errors by field."""
        answers = {k: str(v) for k, v in form.items()}
        try:
            _, _, files = chart_files(
                answers.get("repo", ""), answers.get("chart", ""), answers.get("version", "")
            )
        except ChartReadError as exc:
            return JSONResponse({"errors": {"": str(exc)}}, status_code=404)
        schema = files.schema or {}
        try:
            held = read_yaml_document(answers.get("values_yaml", "").encode(), VALUES_LIMITS)
        except ValueError as exc:
            return JSONResponse({"errors": {"values_yaml": f"not YAML the chart can take: {exc}"}})
        if held is not None and not isinstance(held, dict):
            return JSONResponse({"errors": {"values_yaml": "the values must be a mapping"}})
        values: dict[str, Any] = held or {}
        errors: dict[str, str] = {}
        if answers.get("direction") == "form":
            values, errors = values_from_form(schema, answers, values, files.values)
        rendered_with = coalesced(files.values, values)
        if not errors and schema:
            errors = validate_values(schema, rendered_with)
        shown = {f.name: f.value for f in form_fields(schema, rendered_with)} if schema else {}
        body = {"values_yaml": _yaml(values, answers.get("values_yaml", "")), "fields": shown}
        return JSONResponse(body | {"errors": errors})

    def posted(
        handler: Callable[[Request, Session, FormData], Response],
        *,
        limit: int = MAX_FORM_BYTES,
        max_fields: int = 8,
    ) -> Callable[[Request], Awaitable[Response]]:
        """A change a signed-in user asks for: its form read within `limit`, its CSRF token
        checked against the session's, then `handler` run off the event loop."""

        async def endpoint(request: Request) -> Response:
            session = await run_in_threadpool(current, request)
            if session is None:
                return RedirectResponse("/signin", status_code=303)
            try:
                form = await _small_form(request, limit, max_fields=max_fields)
            except _FormTooLarge:
                return error(
                    request, "Refused", "The form is not one this page sends.", 413, session=session
                )
            if not _same(str(form.get("csrf", "")), session.csrf):
                return error(
                    request,
                    "Refused",
                    "The form has expired: reload the page.",
                    403,
                    session=session,
                )
            return await run_in_threadpool(handler, request, session, form)

        return endpoint

    def named(request: Request) -> tuple[str, str]:
        """The namespace and release a path names, checked (ValueError otherwise)."""
        namespace = check_namespace(str(request.path_params["namespace"]))
        return namespace, check_release_name(str(request.path_params["release"]))

    def app_page(
        request: Request, session: Session, problem: str | None = None, status: int = 200
    ) -> Response:
        try:
            namespace, release = named(request)
        except ValueError as exc:
            return error(request, "No such app", str(exc), 404, session=session)
        try:
            found = releases_reader.history(session.user, namespace, release)
        except ApiError as exc:
            code = 403 if exc.status == 403 else 502
            return error(request, "App unavailable", exc.message, code, session=session)
        latest = found.latest
        if latest is None:
            message = f"there is no release {release} in {namespace}"
            return error(request, "No such app", message, 404, session=session)
        try:
            live_part = fragment(
                "app_live.html",
                namespace=namespace,
                release=release,
                **app_live(session, namespace, latest),
            )
        except LIVE_PROBLEMS as exc:
            live_part = fragment("problem.html", message=str(exc))
        return page(
            request,
            "app.html",
            status,
            session=session,
            namespace=namespace,
            release=release,
            live_part=live_part,
            may_change=may_change(session, namespace),
            latest=latest.release,
            history=found.releases,
            values_yaml=latest.values_yaml,
            notes=latest.notes.strip(),
            problem=problem or latest.problem or None,
        )

    def may_change(session: Session, namespace: str) -> bool:
        """Whether the user may change releases in `namespace` (create Secrets there, as
        helm does): pages offer changes only then. RBAC decides again when helm acts."""
        try:
            return namespace in deployable(session)
        except (ApiError, BadToken):
            return True  # cannot tell: offer it, and let the cluster answer

    def app_view(request: Request, session: Session) -> Response:
        return app_page(request, session)

    def cluster_nodes() -> list[dict[str, Any]]:
        try:
            return config.nodes()
        except ApiError as exc:
            log.warning("the dashboard cannot list nodes: %s", exc)
            return []

    parsed_refs: OrderedDict[tuple[str, str], tuple[list[ObjectRef], list[str]]] = OrderedDict()
    refs_lock = threading.Lock()

    def refs_of(manifest: str, namespace: str) -> tuple[list[ObjectRef], list[str]]:
        """The objects a release's manifests name, parsed once per manifest (a live page
        asks every few seconds; the text is the newest revision's, kept by the reader, so
        its hash is computed once)."""
        key = (namespace, manifest)
        with refs_lock:
            if key in parsed_refs:
                parsed_refs.move_to_end(key)
                return parsed_refs[key]
        found = object_refs(manifest, namespace)
        with refs_lock:
            parsed_refs[key] = found
            while len(parsed_refs) > PARSED_MANIFESTS:
                parsed_refs.popitem(last=False)
        return found

    def app_live(session: Session, namespace: str, latest: ReleaseDetail | None) -> dict[str, Any]:
        """The app's live part, from its newest revision (None: it is gone): its objects
        now, and its Services' network as every node programs it, with each node's sync
        state."""
        if latest is None:
            return {"gone": True}
        refs, unreadable = refs_of(latest.manifest, namespace)
        live = live_resources(releases_reader.client(session.user), refs)
        nodes = node_infos(memo(shared_memo, "nodes", NAMESPACES_TTL, cluster_nodes))
        networks = service_networks(
            live.services, live.slices, nodes, config.cluster_cidrs, live.unknown_endpoints
        )
        health = memo(
            shared_memo,
            "health",
            max(HEALTH_TTL, config.live_interval),
            lambda: node_health(nodes, config.proxy_health),
        )
        syncs = {
            (n.namespace, n.name): [sync_state(h, n.changed) for h in health] for n in networks
        }
        return {
            "gone": False,
            "latest": latest.release,
            "resources": live.resources,
            "unreadable": unreadable,
            "networks": networks,
            "syncs": syncs,
            "nodes": nodes,
        }

    def network_preview(
        session: Session, namespace: str, rendered: str, deployed: str
    ) -> dict[str, Any]:
        """What the rendered manifests change on the nodes, against the live cluster."""
        client = releases_reader.client(session.user)
        seen: dict[str, list[dict[str, Any]]] = {}
        notes: list[str] = []
        for what, path in (
            ("Services", f"/api/v1/namespaces/{namespace}/services"),
            ("EndpointSlices", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"),
            ("Pods", f"/api/v1/namespaces/{namespace}/pods"),
        ):
            try:
                seen[what] = json.loads(client.get(path)).get("items") or []
            except ApiError as exc:
                seen[what] = []
                notes.append(f"{what} of {namespace} could not be read: {exc.message}")
        try:
            everything = memo(shared_memo, "services", NAMESPACES_TTL, config.services)
        except ApiError as exc:
            everything = []
            notes.append(f"the cluster's Services could not be listed: {exc.message}")
        changes, errors = preview(
            rendered,
            deployed,
            namespace,
            seen["Services"],
            everything,
            seen["EndpointSlices"],
            seen["Pods"],
        )
        return {"changes": changes, "notes": notes + errors}

    def fragment(name: str, **context: Any) -> str:
        return env.get_template(name).render(**context)

    streams: dict[str, int] = {}  # live streams open, by user
    streams_lock = threading.Lock()
    live_renders = anyio.CapacityLimiter(LIVE_RENDERS)

    def live(render: Callable[[Request, Session], str]) -> Callable[[Request], Awaitable[Response]]:
        """A page part kept current by server-sent events: `render` is run every
        `live_interval` seconds and sent when its HTML changed."""

        async def endpoint(request: Request) -> Response:
            # A stream (and the browser opening the next one) is not the user's activity.
            session = await run_in_threadpool(current, request, touch=False)
            if session is None:
                return Response("sign in first", status_code=401, media_type="text/plain")
            who = streamer(session.username)
            with streams_lock:
                if streams.get(who, 0) >= LIVE_PER_USER or sum(streams.values()) >= LIVE_STREAMS:
                    return Response("too many live pages", status_code=429, media_type="text/plain")
                streams[who] = streams.get(who, 0) + 1

            async def events() -> Any:
                last, quiet, started = None, time.monotonic(), time.monotonic()
                try:
                    yield f"retry: {int(config.live_interval * 1000) + 1000}\n\n"
                    while time.monotonic() - started < LIVE_MAX:
                        if await request.is_disconnected() or sessions.peek(session.id) is None:
                            return
                        try:
                            # Live renders have threads of their own: they cannot take all
                            # of those that serve pages.
                            html = await anyio.to_thread.run_sync(
                                render, request, session, limiter=live_renders
                            )
                        except LIVE_PROBLEMS as exc:
                            html = fragment("problem.html", message=str(exc))
                        if html != last:
                            last, quiet = html, time.monotonic()
                            data = "".join(f"data: {line}\n" for line in html.splitlines())
                            yield f"event: update\n{data}\n"
                        elif time.monotonic() - quiet > LIVE_KEEPALIVE:
                            quiet = time.monotonic()
                            yield ": still here\n\n"
                        await asyncio.sleep(config.live_interval)
                finally:
                    with streams_lock:
                        streams[who] -= 1
                        if not streams[who]:
                            del streams[who]

            return StreamingResponse(
                events(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        return endpoint

    def apps_fragment(request: Request, session: Session) -> str:
        return fragment("apps_list.html", **app_list(session))

    def app_fragment(request: Request, session: Session) -> str:
        namespace, release = named(request)
        latest = releases_reader.history(session.user, namespace, release).latest
        return fragment(
            "app_live.html",
            namespace=namespace,
            release=release,
            **app_live(session, namespace, latest),
        )

    def change(request: Request, session: Session, form: FormData, verb: str) -> Response:
        try:
            namespace, release = named(request)
        except ValueError as exc:
            return error(request, "No such app", str(exc), 404, session=session)
        revision = str(form.get("revision", ""))
        if verb == "rollback" and not revision.isdigit():
            return app_page(request, session, "Pick a revision to roll back to.", 422)
        if verb == "delete" and str(form.get("confirm", "")).strip() != release:
            return app_page(request, session, "Type the release's name to delete it.", 422)
        # helm 4 says only "failed to delete release" when RBAC refuses: ask RBAC first,
        # in words the user can act on (it decides again when helm acts).
        needed = ("create", "roll back") if verb == "rollback" else ("delete", "delete")
        try:
            allowed = UserAccess(config.server, session.user).can(needed[0], "secrets", namespace)
        except (BadToken, ApiError) as exc:
            return error(request, "Not done", str(exc), 503, session=session)
        if not allowed:
            return app_page(
                request,
                session,
                f"You may not {needed[1]} releases in {namespace}: your rights there do not "
                f"allow to {needed[0]} Secrets, where helm keeps releases.",
                403,
            )
        try:
            if verb == "rollback":
                helm.rollback(session.user, release, namespace, int(revision))
            else:
                helm.uninstall(session.user, release, namespace)
        except HelmError as exc:
            return app_page(request, session, exc.message, 403 if exc.forbidden else 422)
        except ValueError as exc:
            return app_page(request, session, str(exc), 422)
        log.info("%s: %s %s in %s", session.username, verb, release, namespace)
        target = "/apps" if verb == "delete" else f"/apps/{namespace}/{release}"
        return RedirectResponse(target, status_code=303)

    def changing(verb: str) -> Callable[[Request], Awaitable[Response]]:
        return posted(lambda request, session, form: change(request, session, form, verb))

    def upgrade_page(
        request: Request,
        session: Session,
        form: FormData | None = None,
    ) -> Response:
        try:
            namespace, release = named(request)
        except ValueError as exc:
            return error(request, "No such app", str(exc), 404, session=session)
        user = session.user
        asked = form if form is not None else request.query_params
        try:
            deployed = releases_reader.history(user, namespace, release).latest
        except ApiError as exc:
            return error(request, "App unavailable", str(exc), 502, session=session)
        if deployed is None:
            message = f"there is no release {release} in {namespace}"
            return error(request, "No such app", message, 404, session=session)
        if deployed.problem:
            return error(request, "Not changed here", deployed.problem, 422, session=session)
        current_values = dict(deployed.values)
        chart, current = deployed.release.chart, deployed.release.chart_version
        refresh_catalog()
        repo = next((r for r in config.repos if catalog.versions(r.name, chart)), None)
        if repo is None:
            message = f"no configured repository has the chart {chart!r}"
            return error(request, "Nothing to upgrade to", message, 404, session=session)
        versions = [v.version for v in catalog.versions(repo.name, chart)]
        version = str(asked.get("version") or versions[0])
        if version not in versions:
            return error(
                request, "No such version", f"{chart} {version[:40]}", 404, session=session
            )
        try:
            _, _, files = chart_files(repo.name, chart, version)
        except ChartReadError as exc:
            return error(request, "Chart unavailable", str(exc), 502, session=session)
        context: dict[str, Any] = {
            "session": session,
            "namespace": namespace,
            "release": release,
            "repo": repo.name,
            "current_chart": chart,
            "current_version": current,
            "versions": versions,
            "version": version,
            "errors": {},
            "preview": None,
            "network": None,
            "values_yaml": _yaml(current_values, "") if current_values else "{}\n",
            "source": "yaml",
            "fields": (
                form_fields(files.schema, coalesced(files.values, current_values))
                if files.schema
                else []
            ),
        }
        if form is None:
            return page(request, "upgrade.html", **context)
        answers = {k: str(v) for k, v in form.items()}
        source = "form" if answers.get("source") == "form" else "yaml"
        values, errors = read_values(answers, files, source, current_values)
        context["source"] = source
        context["values_yaml"] = (
            answers.get("values_yaml", "") if source == "yaml" or errors else _yaml(values, "")
        )
        if files.schema:
            shown = values if not errors else current_values
            context["fields"] = form_fields(files.schema, coalesced(files.values, shown))
        if errors:
            context["errors"] = errors
            return page(request, "upgrade.html", 422, **context)
        seen = json.dumps([namespace, release, version, values], sort_keys=True, default=str)
        token = hmac.new(session.csrf.encode(), seen.encode(), "sha256").hexdigest()
        try:
            if answers.get("action") == "confirm" and _same(answers.get("previewed"), token):
                helm.upgrade(
                    user, release, chart, namespace, values, version=version, repo=repo.url
                )
                log.info(
                    "%s upgraded %s in %s to %s %s",
                    session.username,
                    release,
                    namespace,
                    chart,
                    version,
                )
                return RedirectResponse(f"/apps/{namespace}/{release}", status_code=303)
            rendered = helm.template(
                release, chart, namespace, values, version=version, repo=repo.url
            )
        except HelmError as exc:
            code = 403 if exc.forbidden else 422
            context["errors"] = {"": exc.message}
            return page(request, "upgrade.html", code, **context)
        context["preview"] = {
            "values_diff": _diff(_yaml(current_values, ""), _yaml(values, ""), "values"),
            # helm keeps the manifests with blank lines at the end; templates render none.
            "manifest_diff": _diff(
                deployed.manifest.rstrip() + "\n", rendered.rstrip() + "\n", "manifests"
            ),
            "token": token,
        }
        if may_change(session, namespace):  # what others hold is only told to who may deploy
            context["network"] = network_preview(session, namespace, rendered, deployed.manifest)
        return page(request, "upgrade.html", **context)

    def upgrade_view(request: Request, session: Session) -> Response:
        return upgrade_page(request, session)

    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/apps", signed_in(apps)),
        Route("/apps/live", live(apps_fragment)),
        Route(
            "/values",
            posted(values_sync, limit=MAX_DEPLOY_FORM_BYTES, max_fields=MAX_FIELDS + 16),
            methods=["POST"],
        ),
        Route("/catalog", signed_in(catalog_page)),
        Route("/catalog/{repo}/{chart}", signed_in(chart_page)),
        Route("/deploy", signed_in(deploy_form), methods=["GET"]),
        Route(
            "/deploy",
            posted(deploy, limit=MAX_DEPLOY_FORM_BYTES, max_fields=MAX_FIELDS + 16),
            methods=["POST"],
        ),
        Route("/apps/{namespace}/{release}", signed_in(app_view), methods=["GET"]),
        Route("/apps/{namespace}/{release}/live", live(app_fragment), methods=["GET"]),
        Route("/apps/{namespace}/{release}/upgrade", signed_in(upgrade_view), methods=["GET"]),
        Route(
            "/apps/{namespace}/{release}/upgrade",
            posted(upgrade_page, limit=MAX_DEPLOY_FORM_BYTES, max_fields=MAX_FIELDS + 16),
            methods=["POST"],
        ),
        Route("/apps/{namespace}/{release}/rollback", changing("rollback"), methods=["POST"]),
        Route("/apps/{namespace}/{release}/delete", changing("delete"), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            releases_reader.close()  # the users' kept connections

    app = Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=security_headers)],
        lifespan=lifespan,
    )
    app.state.sessions = sessions
    app.state.catalog = catalog
    app.state.cookies = (session_cookie, signin_cookie)
    return app
