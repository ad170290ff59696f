"""Connecting to the Kubernetes API with the standard library only: kubeconfig, in-cluster
service-account credentials, and a small HTTP client for LIST and WATCH. Errors say what a
caller should do: `ApiError`, and under it `Forbidden` (do not retry soon), `Gone` (list
again) and `Unavailable` (retry with backoff)."""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "ApiError",
    "Client",
    "ClusterConfig",
    "Forbidden",
    "Gone",
    "KubeConfigError",
    "Unavailable",
    "WatchStream",
    "in_cluster",
    "load_kubeconfig",
    "status_error",
]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG: Final = Path.home() / ".kube" / "config"
USER_AGENT: Final = "nftproxy"


# --- errors -----------------------------------------------------------------------------------


class KubeConfigError(ValueError):
    """A kubeconfig or in-cluster configuration that cannot be used; names file and field."""


class ApiError(Exception):
    """The API server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.message = " ".join(message.split())
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.path}"
        if self.status:
            return f"{where}: HTTP {self.status} {self.reason}: {self.message}"
        return f"{where}: {self.message}"


class Forbidden(ApiError):
    """401 or 403: not authenticated, or RBAC denies the verb on the resource."""


class Gone(ApiError):
    """410: the requested resourceVersion (or continue token) is too old; re-list."""


class Unavailable(ApiError):
    """Connection failure, timeout, 429 or 5xx: worth retrying with backoff."""


# --- configuration ----------------------------------------------------------------------------


@dataclass(slots=True)
class ClusterConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = field(default=None, repr=False)  # never in a log line
    # Read again whenever it changes: projected service-account tokens rotate.
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    _token_cache: tuple[tuple[int, int, int], str] | None = field(
        default=None, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bearer_token(self) -> str | None:
        """The token to send now: token_file (re-read when it changed), else token."""
        if not self.token_file:
            return self.token
        with self._lock:
            try:
                st = os.stat(self.token_file)
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
                if self._token_cache is None or self._token_cache[0] != sig:
                    text = Path(self.token_file).read_text().strip()
                    self._token_cache = (sig, text)
            except OSError:
                # Keep using the last token read; a rotation replaces the file atomically.
                if self._token_cache is None:
                    return self.token
            return self._token_cache[1]


_temp_files: list[str] = []
_temp_lock = threading.Lock()


def _remove_temp_files() -> None:
    with _temp_lock:
        for path in _temp_files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        _temp_files.clear()


atexit.register(_remove_temp_files)


def _private_file(data: bytes, suffix: str) -> str:
    """Write data to a 0600 temporary file that is removed when the process exits."""
    fd, path = tempfile.mkstemp(prefix="nftproxy-kube-", suffix=suffix)  # mode 0600
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    with _temp_lock:
        _temp_files.append(path)
    return path


def _named(entries: object, name: str, key: str, source: str, what: str) -> Mapping[str, Any]:
    """The `key` mapping of the entry called `name` in a kubeconfig list (clusters/users)."""
    if not isinstance(entries, list):
        raise KubeConfigError(f"{source}: {what}s: expected a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(key)
            if body is None:
                return {}
            if not isinstance(body, dict):
                raise KubeConfigError(f"{source}: {what} {name!r}: {key}: expected a mapping")
            return body
    raise KubeConfigError(f"{source}: {what} {name!r} is not defined in {what}s")


def _string(body: Mapping[str, Any], key: str, source: str, where: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise KubeConfigError(f"{source}: {where}.{key}: expected a string")
    return value


def _file_or_data(
    body: Mapping[str, Any], key: str, base: Path, source: str, where: str, suffix: str
) -> str | None:
    """`<key>` (a path, relative to the kubeconfig) or `<key>-data` (base64) as a file path."""
    data = _string(body, f"{key}-data", source, where)
    if data is not None:
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{source}: {where}.{key}-data: not valid base64") from None
        return _private_file(raw, suffix)
    path = _string(body, key, source, where)
    if path is None:
        return None
    full = base / os.path.expanduser(path)
    if not full.is_file():
        raise KubeConfigError(f"{source}: {where}.{key}: {full} does not exist")
    return str(full)


def load_kubeconfig(
    path: str | os.PathLike[str] | None = None, context: str | None = None
) -> ClusterConfig:
    """Read a kubeconfig: `path`, else the first file in $KUBECONFIG, else ~/.kube/config."""
    if path is None:
        env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        path = env[0] if env else DEFAULT_KUBECONFIG
    file = Path(path).expanduser()
    source = str(file)
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise KubeConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise KubeConfigError(f"{source}: not valid YAML: {message}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{source}: expected a kubeconfig mapping")

    name = context or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{source}: current-context: not set and no context given")
    ctx = _named(doc.get("contexts"), name, "context", source, "context")
    cluster_name = _string(ctx, "cluster", source, f"context {name!r}")
    if cluster_name is None:
        raise KubeConfigError(f"{source}: context {name!r}: cluster: is required")
    cluster = _named(doc.get("clusters"), cluster_name, "cluster", source, "cluster")
    user_name = _string(ctx, "user", source, f"context {name!r}")
    user = _named(doc.get("users"), user_name, "user", source, "user") if user_name else {}

    base = file.parent
    cwhere, uwhere = f"cluster {cluster_name!r}", f"user {user_name!r}"
    server = _string(cluster, "server", source, cwhere)
    if server is None:
        raise KubeConfigError(f"{source}: {cwhere}: server: is required")
    scheme = urllib.parse.urlsplit(server).scheme
    if scheme not in ("http", "https"):
        raise KubeConfigError(f"{source}: {cwhere}: server: {server!r} is not an http(s) URL")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeConfigError(f"{source}: {cwhere}.insecure-skip-tls-verify: expected a boolean")
    if user.get("exec") is not None or user.get("auth-provider") is not None:
        raise KubeConfigError(
            f"{source}: {uwhere}: exec and auth-provider plugins are not supported; "
            "use a token, tokenFile or client certificate"
        )
    token_file = _string(user, "tokenFile", source, uwhere)
    if token_file is not None:
        token_file = str(base / os.path.expanduser(token_file))
        if not os.path.isfile(token_file):
            raise KubeConfigError(f"{source}: {uwhere}.tokenFile: {token_file} does not exist")
    cert = _file_or_data(user, "client-certificate", base, source, uwhere, ".crt")
    key = _file_or_data(user, "client-key", base, source, uwhere, ".key")
    if (cert is None) != (key is None):
        missing = "client-key" if key is None else "client-certificate"
        raise KubeConfigError(f"{source}: {uwhere}: {missing}(-data): is required with the other")
    return ClusterConfig(
        server=server.rstrip("/"),
        token=_string(user, "token", source, uwhere),
        token_file=token_file,
        client_cert_file=cert,
        client_key_file=key,
        ca_file=_file_or_data(cluster, "certificate-authority", base, source, cwhere, ".crt"),
        insecure=insecure,
    )


def in_cluster(account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    """The pod's service account and the API server's in-cluster address."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set "
            "(not running in a pod?)"
        )
    directory = Path(account_dir)
    token, ca = directory / "token", directory / "ca.crt"
    for needed in (token, ca):
        if not needed.is_file():
            raise KubeConfigError(f"in-cluster: {needed} does not exist")
    if ":" in host:
        host = f"[{host}]"
    config = ClusterConfig(server=f"https://{host}:{port}", token_file=str(token), ca_file=str(ca))
    if not config.bearer_token():
        raise KubeConfigError(f"in-cluster: {token} is empty")
    return config


# --- HTTP -------------------------------------------------------------------------------------


def status_error(method: str, path: str, status: int, reason: str, body: bytes) -> ApiError:
    """Classify an error response; the message comes from the API's Status object if any."""
    message = ""
    try:
        obj = json.loads(body)
        if isinstance(obj, dict):
            message = str(obj.get("message") or "")
            reason = str(obj.get("reason") or reason)
    except ValueError:
        message = body[:300].decode(errors="replace")
    message = message or reason or "no message"
    cls: type[ApiError]
    if status in (401, 403):
        cls = Forbidden
    elif status == 410:
        cls = Gone
    elif status == 429 or status >= 500:
        cls = Unavailable
    else:
        cls = ApiError
    return cls(method, path, status, reason, message)


class WatchStream:
    """An open streaming response; iterate for one JSON line per watch event.

    `close()` may be called from another thread: it unblocks a pending read, after which
    iteration simply ends.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        sock: socket.socket | None,
        path: str,
    ) -> None:
        self._conn = conn
        self._resp = resp
        self._sock = sock
        self._path = path
        self._closed = False
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        while True:
            try:
                line = resp.readline()
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
                # ValueError/AttributeError: the response was closed under us by close().
                if self._closed:
                    return
                if isinstance(exc, TimeoutError | socket.timeout):
                    raise Unavailable("GET", self._path, 0, "", "watch idle: no data") from None
                raise Unavailable("GET", self._path, 0, "", f"watch read failed: {exc}") from None
            if not line:
                return  # the server ended the watch (timeoutSeconds) or close() was called
            self.bytes_read += len(line)
            line = line.strip()
            if line:
                yield line

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._resp.close()
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Requests to one API server (GETs, watches, reviews). Thread-safe: every request has
    its own connection, or with `keep_alive` one of at most that many kept open between
    requests (watches always get their own)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        timeout: float = 60.0,
        user_agent: str = USER_AGENT,
        keep_alive: int = 0,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.user_agent = user_agent
        self.keep_alive = keep_alive
        self._idle: list[http.client.HTTPConnection] = []
        self._idle_lock = threading.Lock()
        url = urllib.parse.urlsplit(config.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise KubeConfigError(f"server {config.server!r} is not an http(s) URL")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if config.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if config.client_cert_file and config.client_key_file:
                try:
                    ctx.load_cert_chain(config.client_cert_file, config.client_key_file)
                except (OSError, ssl.SSLError) as exc:
                    raise KubeConfigError(
                        f"client certificate {config.client_cert_file} / key "
                        f"{config.client_key_file}: {exc}"
                    ) from None
            self._ssl = ctx

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _target(self, path: str, params: Mapping[str, str] | None) -> str:
        query = urllib.parse.urlencode(params) if params else ""
        return f"{self._prefix}{path}?{query}" if query else f"{self._prefix}{path}"

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self.user_agent}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _open(
        self,
        path: str,
        params: Mapping[str, str] | None,
        timeout: float,
        *,
        method: str = "GET",
        body: bytes | None = None,
        accept: str = "application/json",
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, socket.socket | None]:
        conn = self._connect(timeout)
        headers = self._headers(accept)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._target(path, params), body=body, headers=headers)
            # Kept before getresponse(), which drops conn.sock when the server will close.
            sock: socket.socket | None = conn.sock
            resp = conn.getresponse()
            if resp.status not in (200, 201):
                raise status_error(method, path, resp.status, resp.reason, resp.read())
        except ApiError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            text = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            raise Unavailable(method, path, 0, "", f"{self.config.server}: {text}") from None
        except ValueError:
            # http.client names the header value in its message: a token must not travel on.
            conn.close()
            raise ApiError(
                method, path, 0, "", "a header value HTTP cannot carry (a token with a line break?)"
            ) from None
        return conn, resp, sock

    def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
        accept: str = "application/json",
    ) -> bytes:
        """One GET; the response body (JSON) on 200, else a classified ApiError. `accept`
        may ask for another representation (metadata only, say)."""
        return self._call("GET", path, params, None, timeout, accept)

    def post(self, path: str, body: Mapping[str, Any], *, timeout: float | None = None) -> bytes:
        """One POST of a JSON object (a review, say); the response body on 200 or 201."""
        return self._call("POST", path, None, json.dumps(body).encode(), timeout)

    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        timeout: float | None,
        accept: str = "application/json",
    ) -> bytes:
        wait = self.timeout if timeout is None else timeout
        if self.keep_alive:
            return self._kept(method, path, params, body, wait, accept)
        conn, resp, _ = self._open(path, params, wait, method=method, body=body, accept=accept)
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(method, path, 0, "", f"reading the response: {exc}") from None
        finally:
            conn.close()

    def _kept(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        wait: float,
        accept: str,
    ) -> bytes:
        """One request on a kept connection (a new one when none is idle). A kept connection
        the server closed meanwhile fails before the request reaches it: the request goes
        once more on a new one."""
        headers = self._headers(accept)
        if body is not None:
            headers["Content-Type"] = "application/json"
        target = self._target(path, params)
        while True:
            with self._idle_lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = self._connect(wait)
            elif conn.sock is not None:
                conn.sock.settimeout(wait)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if reused:
                    continue
                raise Unavailable(method, path, 0, "", f"{self.config.server}: closed") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                text = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
                raise Unavailable(method, path, 0, "", f"{self.config.server}: {text}") from None
            except ValueError:
                conn.close()
                raise ApiError(
                    method,
                    path,
                    0,
                    "",
                    "a header value HTTP cannot carry (a token with a line break?)",
                ) from None
            if resp.will_close:
                conn.close()
            else:
                with self._idle_lock:
                    if len(self._idle) < self.keep_alive:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
            if resp.status not in (200, 201):
                raise status_error(method, path, resp.status, resp.reason, data)
            return data

    def close(self) -> None:
        """Close the connections kept open."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def watch(
        self, path: str, params: Mapping[str, str] | None = None, *, idle_timeout: float = 330.0
    ) -> WatchStream:
        """Start a streaming GET (`watch=true` must be in params); no bytes for idle_timeout
        seconds ends the iteration with Unavailable."""
        conn, resp, sock = self._open(path, params, self.timeout)
        if sock is not None:
            sock.settimeout(idle_timeout)
        return WatchStream(conn, resp, sock, path)
