"""A real etcd + kube-apiserver on loopback, for the tests and benchmarks that talk to the
Kubernetes API.

The binaries are built once by ``hack/k8s/build.sh`` into
``${NFTPROXY_K8S_CACHE:-~/.cache/nftproxy/k8s}/<kubernetes version>/``; the version is the
one pinned in ``hack/k8s/go.mod`` of the source checkout. When they are missing,
`BinariesMissing` says what to build (the tests skip on it, except under ``CI=true``).

    with start_control_plane(tmp_path) as cp:
        status, body = cp.request("GET", "/api/v1/namespaces")

Everything here is standard library: no Kubernetes client, no TLS verification (the
apiserver serves a self-signed certificate it generates in ``--cert-dir``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from nftproxy.lab.processes import die_with_parent, stop_processes

REPO = Path(__file__).resolve().parents[3]  # the checkout: src/nftproxy/lab/apiserver.py
GO_MOD = REPO / "hack" / "k8s" / "go.mod"
BUILD_HINT = "kube-apiserver (run hack/k8s/build.sh)"

SERVICE_CIDR = "10.96.0.0/12"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "nftproxy-admin"
TEST_USER = "nftproxy"


class ControlPlaneError(RuntimeError):
    """The control plane did not come up (or an etcd call failed); carries the log tails."""


class BinariesMissing(ControlPlaneError):
    """kube-apiserver or etcd is not built; the message names what and how to build it."""


# --- binaries ------------------------------------------------------------------------


def kubernetes_version() -> str:
    """The k8s.io/kubernetes version pinned in hack/k8s/go.mod, e.g. ``v1.36.3``."""
    for line in GO_MOD.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "k8s.io/kubernetes":
            return fields[1]
    raise ControlPlaneError(f"no k8s.io/kubernetes requirement in {GO_MOD}")


def binary_dir() -> Path:
    root = os.environ.get("NFTPROXY_K8S_CACHE") or Path.home() / ".cache" / "nftproxy" / "k8s"
    return Path(root) / kubernetes_version()


def find_binaries() -> tuple[Path, Path]:
    """(kube-apiserver, etcd); BinariesMissing when they are not built."""
    where = binary_dir()
    apiserver, etcd = where / "kube-apiserver", where / "etcd"
    missing = [p.name for p in (apiserver, etcd) if not os.access(p, os.X_OK)]
    if missing:
        raise BinariesMissing(f"needs {BUILD_HINT}: {', '.join(missing)} missing from {where}")
    return apiserver, etcd


# --- small utilities -----------------------------------------------------------------


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# No proxies: a proxy from the environment must never see loopback test traffic.
_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_insecure_tls())
)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


# --- service-account key pair, without a crypto library ------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, math.isqrt(p) + 1))]


def _is_probable_prime(n: int, rounds: int = 16) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int) -> int:
    while True:
        # Top two bits set: the product of two such primes has exactly 2*bits bits.
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _is_probable_prime(n):
            return n


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(x: int) -> bytes:
    return _der(0x02, x.to_bytes(x.bit_length() // 8 + 1, "big"))


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _pem(kind: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()


def rsa_key_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    """(PKCS#1 private key PEM, PKIX public key PEM) of a fresh RSA key."""
    e = 65537
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits // 2)
        if p != q and math.gcd(e, (p - 1) * (q - 1)) == 1:
            break
    if p < q:
        p, q = q, p
    n = p * q
    d = pow(e, -1, (p - 1) * (q - 1))
    private = _der_seq(*map(_der_int, (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    rsa_encryption = _der_seq(bytes.fromhex("06092a864886f70d010101"), b"\x05\x00")
    public = _der_seq(rsa_encryption, _der(0x03, b"\x00" + _der_seq(_der_int(n), _der_int(e))))
    return _pem("RSA PRIVATE KEY", private), _pem("PUBLIC KEY", public)


# --- the control plane ---------------------------------------------------------------


class _Server:
    """One child process with its log file; stopped by its own PID only."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path) -> None:
        self.name, self.argv, self.log, self.cwd = name, argv, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._logf: IO[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already running"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._logf.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
        self._logf.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            # Dies with the forking thread: start from one that lives as long as the control
            # plane (pytest's main thread does).
            preexec_fn=die_with_parent,
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_processes([proc], grace)
        if self._logf is not None:
            self._logf.close()
            self._logf = None


class ControlPlane:
    """etcd + kube-apiserver on 127.0.0.1. Use as a context manager (or call stop())."""

    def __init__(
        self, tmpdir: Path, *, timeout: float, watch_cache: bool, extra_args: Sequence[str]
    ) -> None:
        self.dir = Path(tmpdir)
        self.timeout = timeout
        apiserver_bin, etcd_bin = find_binaries()
        client_port, peer_port, self.port = free_ports(3)
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.user_token = secrets.token_hex(16)

        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = _Server(
            "etcd",
            [
                str(etcd_bin),
                "--name=nftproxy-test",
                f"--data-dir={self.dir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=nftproxy-test={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throwaway data: don't pay for fsync
                "--log-level=warn",
            ],
            self.dir / "etcd.log",
            self.dir,
        )

        tokens = self.dir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{self.user_token},{TEST_USER},{TEST_USER}\n"
        )
        sa_key, sa_pub = self.dir / "sa.key", self.dir / "sa.pub"
        private, public = rsa_key_pair()
        sa_key.write_bytes(private)
        sa_pub.write_bytes(public)
        self._apiserver = _Server(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={self.etcd_url}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-account-issuer={ISSUER}",
                f"--cert-dir={self.dir / 'certs'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--disable-admission-plugins=ServiceAccount",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--profiling=false",
                *(() if watch_cache else ("--watch-cache=false",)),
                *extra_args,
            ],
            self.dir / "kube-apiserver.log",
            self.dir,
        )

    # -- lifecycle

    def start(self) -> ControlPlane:
        try:
            self._etcd.start()
            self._wait("etcd", self._etcd, self._etcd_healthy)
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_apiserver(self) -> None:
        self._apiserver.start()
        self._wait("kube-apiserver", self._apiserver, self._apiserver_ready)

    def restart_apiserver(self) -> None:
        """Stop and start kube-apiserver only (same port, same etcd, same certificate)."""
        self._apiserver.stop()
        self._start_apiserver()

    def stop(self) -> None:
        """Stop both servers (apiserver first). Safe to call more than once."""
        try:
            self._apiserver.stop()
        finally:
            self._etcd.stop()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def logs(self, lines: int = 25) -> str:
        return "\n".join(
            f"--- last lines of {s.log}:\n{_tail(s.log, lines)}"
            for s in (self._etcd, self._apiserver)
        )

    def _wait(self, what: str, server: _Server, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        last = "never answered"
        while True:
            code = server.exited()
            if code is not None:
                raise ControlPlaneError(f"{what} exited with status {code}\n{self.logs()}")
            try:
                if ready():
                    return
                last = "not ready"
            except OSError as e:  # refused, reset, TLS handshake, HTTP error
                last = repr(e)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not ready after {self.timeout:.0f}s ({last})\n{self.logs()}"
                )
            time.sleep(0.1)

    def _etcd_healthy(self) -> bool:
        with _OPENER.open(f"{self.etcd_url}/health", timeout=2) as r:
            return bool(json.load(r).get("health") == "true")

    def _apiserver_ready(self) -> bool:
        status, body = self.request("GET", "/readyz", timeout=2)
        return status == 200 and body == "ok"

    # -- API access

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One API call (admin token unless another is given): (HTTP status, decoded body).

        JSON bodies are decoded, others returned as text; HTTP errors are returned, not
        raised. Connection problems raise OSError.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get_content_type()
            e.close()
        text = raw.decode(errors="replace")
        return status, json.loads(text) if ctype == "application/json" else text

    def open_stream(self, path: str, *, token: str | None = None, timeout: float = 10.0) -> Any:
        """An open response for a streaming GET (a watch); read lines, then close it.

        Raises urllib.error.HTTPError for error statuses. ``timeout`` bounds each read.
        """
        req = urllib.request.Request(self.url + path)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        return _OPENER.open(req, timeout=timeout)

    def kubeconfig(self, path: Path | str, token: str) -> Path:
        """Write a kubeconfig for this apiserver with a bearer token (TLS not verified)."""
        q = json.dumps  # a JSON string is a valid YAML scalar, whatever it holds
        text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: nftproxy-test
  cluster:
    server: {q(self.url)}
    insecure-skip-tls-verify: true
users:
- name: nftproxy-test
  user:
    token: {q(token)}
contexts:
- name: nftproxy-test
  context:
    cluster: nftproxy-test
    user: nftproxy-test
current-context: nftproxy-test
"""
        path = Path(path)
        path.write_text(text)
        path.chmod(0o600)
        return path

    # -- etcd

    def _etcd_call(self, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.etcd_url}/v3/{rpc}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _OPENER.open(req, timeout=30) as r:
                result: dict[str, Any] = json.load(r)
                return result
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            e.close()
            raise ControlPlaneError(f"etcd {rpc}: HTTP {e.code}: {detail}") from None

    def etcd_revision(self) -> int:
        """etcd's current revision (what the apiserver calls the resourceVersion)."""
        header = self._etcd_call("kv/range", {"key": "AA==", "count_only": True})["header"]
        return int(header["revision"])

    def compact(self) -> int:
        """Compact etcd to its current revision (physically) and return that revision.

        Watches from any older resourceVersion that reach etcd then fail with 410 Gone.
        """
        rev = self.etcd_revision()
        try:
            self._etcd_call("kv/compaction", {"revision": str(rev), "physical": True})
        except ControlPlaneError as e:
            if "compacted" not in str(e):  # already compacted to rev: nothing to do
                raise
        return rev


def start_control_plane(
    tmpdir: Path | str,
    *,
    timeout: float = 60.0,
    watch_cache: bool = True,
    extra_apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    """Start etcd and kube-apiserver on free loopback ports; return once /readyz is ok.

    Files (etcd data, certificates, keys, tokens, logs) go into ``tmpdir``. On failure
    the processes are stopped and ControlPlaneError carries the end of both logs;
    BinariesMissing (one) before anything starts when the binaries are not built.

    ``watch_cache=False`` (``--watch-cache=false``) sends every watch to etcd. Only then
    does compact() decide which resourceVersions expire: with the watch cache (the
    default, as in real clusters) a watch is served from the apiserver's memory, which
    still holds compacted revisions, and it answers 410 for any resourceVersion older
    than its own start instead (so after restart_apiserver(), even without compaction).
    """
    tmp = Path(tmpdir)
    tmp.mkdir(parents=True, exist_ok=True)
    return ControlPlane(
        tmp, timeout=timeout, watch_cache=watch_cache, extra_args=extra_apiserver_args
    ).start()


__all__ = [
    "BUILD_HINT",
    "SERVICE_CIDR",
    "BinariesMissing",
    "ControlPlane",
    "ControlPlaneError",
    "binary_dir",
    "find_binaries",
    "free_ports",
    "kubernetes_version",
    "rsa_key_pair",
    "start_control_plane",
]
