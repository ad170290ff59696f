"""The dashboard's web application (Starlette, Jinja2 with autoescape): sign-in with the
user's own token, sessions held server-side, a CSRF token on every change, and the pages.
Every call to the cluster is made with the signed-in user's token."""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from nftproxy.dashboard.access import BadToken, NamespaceAccess, UserAccess
from nftproxy.dashboard.catalog import Catalog, RepoConfig
from nftproxy.dashboard.helm import ApiServer, Credentials, Helm, HelmError
from nftproxy.kube.client import ApiError

__all__ = [
    "SESSION_COOKIE",
    "SIGNIN_COOKIE",
    "DashboardConfig",
    "Session",
    "Sessions",
    "create_app",
]

log = logging.getLogger("nftproxy.dashboard")

SESSION_COOKIE = "nftproxy_session"
SIGNIN_COOKIE = "nftproxy_signin"  # the sign-in form's CSRF token, before any session
MAX_TOKEN_CHARS = 16_384
CATALOG_REFRESH = 300.0
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    server: ApiServer  # where users' own calls go
    helm: Path
    homes: Path  # per-user helm homes
    namespaces: Callable[[], list[str]]  # candidate namespaces, listed by the dashboard itself
    repos: tuple[RepoConfig, ...] = ()
    token_header: str | None = None  # an authenticating proxy's header with the user's token
    secure_cookies: bool = False  # served over TLS: cookies only over TLS too
    session_idle: float = 1800.0


@dataclass(slots=True)
class Session:
    id: str = field(repr=False)
    user: Credentials
    username: str
    csrf: str = field(repr=False)
    last_seen: float


class Sessions:
    """Signed-in users, in memory only: a token lives as long as its session."""

    def __init__(self, idle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self.clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def new(self, user: Credentials, username: str) -> Session:
        session = Session(
            secrets.token_urlsafe(32), user, username, secrets.token_urlsafe(32), self.clock()
        )
        with self._lock:
            self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            for stale in [k for k, s in self._by_id.items() if now - s.last_seen > self.idle]:
                del self._by_id[stale]
            session = self._by_id.get(session_id)
            if session is not None:
                session.last_seen = now
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def create_app(config: DashboardConfig) -> Starlette:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates = Jinja2Templates(env=env)
    sessions = Sessions(config.session_idle)
    helm = Helm(config.helm, config.server, config.homes)
    catalog = Catalog(config.repos)
    refreshed: list[float] = []
    catalog_lock = threading.Lock()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("session", None)
        response: Response = templates.TemplateResponse(request, name, context, status_code=status)
        return response

    def error(request: Request, title: str, message: str, status: int, **context: Any) -> Response:
        return page(request, "error.html", status, title=title, message=message, **context)

    def set_session_cookie(response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.id,
            httponly=True,
            samesite="strict",
            secure=config.secure_cookies,
            path="/",
        )

    def current(request: Request) -> Session | None:
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None or not config.token_header:
            return session
        token = request.headers.get(config.token_header, "").removeprefix("Bearer ").strip()
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        user = Credentials(token)
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
            response = await run_in_threadpool(handler, request, session)
            if request.cookies.get(SESSION_COOKIE) != session.id:
                set_session_cookie(response, session)  # signed in by the proxy's header
            return response

        return endpoint

    async def home(request: Request) -> Response:
        session = await run_in_threadpool(current, request)
        return RedirectResponse("/apps" if session else "/signin", status_code=303)

    async def signin_form(request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "signin.html", csrf=token, error=None)
        response.set_cookie(
            SIGNIN_COOKIE, token, httponly=True, samesite="strict", secure=config.secure_cookies
        )
        return response

    async def signin(request: Request) -> Response:
        form = await request.form()
        if not _same(str(form.get("csrf", "")), request.cookies.get(SIGNIN_COOKIE)):
            return error(request, "Refused", "The form has expired: sign in again.", 403)
        token = str(form.get("token", "")).strip()
        retry = secrets.token_urlsafe(32)

        def again(message: str, status: int) -> Response:
            response = page(request, "signin.html", status, csrf=retry, error=message, session=None)
            response.set_cookie(
                SIGNIN_COOKIE, retry, httponly=True, samesite="strict", secure=config.secure_cookies
            )
            return response

        if not token or len(token) > MAX_TOKEN_CHARS:
            return again("Paste a token to sign in.", 400)
        user = Credentials(token)
        try:
            name = await run_in_threadpool(UserAccess(config.server, user).username)
        except BadToken as exc:
            return again(f"Not signed in: {exc}.", 401)
        except ApiError as exc:
            return again(f"The cluster cannot be asked right now: {exc.message}", 503)
        session = sessions.new(user, name)
        log.info("signed in: %s", name)
        response = RedirectResponse("/apps", status_code=303)
        set_session_cookie(response, session)
        response.delete_cookie(SIGNIN_COOKIE)
        return response

    async def signout(request: Request) -> Response:
        session = await run_in_threadpool(current, request)
        form = await request.form()
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        if not _same(str(form.get("csrf", "")), session.csrf):
            return error(request, "Refused", "The form has expired: reload the page.", 403)
        sessions.drop(session.id)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def apps(request: Request, session: Session) -> Response:
        access = UserAccess(config.server, session.user)
        try:
            namespaces: list[NamespaceAccess] = access.namespaces(config.namespaces())
        except BadToken as exc:
            sessions.drop(session.id)
            return error(request, "Signed out", f"{exc}: sign in again.", 401, session=None)
        except ApiError as exc:
            return error(request, "Cluster unavailable", exc.message, 503, session=session)
        releases: dict[str, list[dict[str, Any]]] = {}
        problems: dict[str, str] = {}
        for ns in namespaces:
            if not ns.view:
                continue
            try:
                releases[ns.name] = helm.releases(session.user, ns.name)
            except HelmError as exc:
                problems[ns.name] = exc.message
        return page(
            request,
            "apps.html",
            session=session,
            namespaces=namespaces,
            releases=releases,
            problems=problems,
        )

    def refresh_catalog(force: bool = False) -> dict[str, str]:
        with catalog_lock:
            now = time.monotonic()
            if force or not refreshed or now - refreshed[-1] > CATALOG_REFRESH:
                refreshed[:] = [now]
                return catalog.refresh()
        return {}

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

    routes = [
        Route("/", home),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/apps", signed_in(apps)),
        Route("/catalog", signed_in(catalog_page)),
    ]
    app = Starlette(routes=routes)
    app.state.sessions = sessions
    app.state.catalog = catalog
    return app
