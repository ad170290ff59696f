"""An OCI registry on loopback for the dashboard's tests: go-containerregistry's registry
server (hack/dashboard/build.sh builds it; it keeps what is pushed in memory), with charts
packaged and pushed by helm itself. And a gate in front of it, as public registries are:
it answers anonymous clients with a bearer-token challenge, may refuse the catalog, and
may hand out tampered blobs (a mirror that cannot be trusted)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from nftproxy.dashboard.helm import Helm
from nftproxy.lab.processes import die_with_parent, stop_processes

__all__ = ["OciRegistry", "RegistryGate", "RegistryMissing", "find_registry"]


class RegistryMissing(RuntimeError):
    """No registry binary: the message says how to build one."""


def find_registry() -> Path:
    """$NFTPROXY_REGISTRY, else the one hack/dashboard/build.sh built."""
    given = os.environ.get("NFTPROXY_REGISTRY")
    if given:
        return Path(given)
    cache = os.environ.get("NFTPROXY_DASHBOARD_CACHE") or Path.home() / ".cache/nftproxy/dashboard"
    built = Path(cache) / "bin" / "registry"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise RegistryMissing(
        "no OCI registry (go-containerregistry's cmd/registry): run hack/dashboard/build.sh "
        "(or set NFTPROXY_REGISTRY)"
    )


class OciRegistry:
    """The registry server on a free loopback port, stopped by its PID on exit."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.binary = binary
        self.log = log
        self.address = ""  # 127.0.0.1:PORT once started
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "charts") -> str:
        """The dashboard's name for the charts under `path`: plain HTTP, said explicitly."""
        return f"oci+http://{self.address}/{path}"

    def push(self, helm: Helm, charts: Iterable[Path], path: str = "charts") -> None:
        """`helm package` each chart source directory, then `helm push` it under `path`."""
        for chart in charts:
            packaged = chart.parent / "packaged"
            packaged.mkdir(exist_ok=True)
            out = helm.run(["package", str(chart), "--destination", str(packaged)])
            archive = out.strip().rsplit(": ", 1)[-1]
            helm.run(["push", archive, f"oci://{self.address}/{path}", "--plain-http"])

    def push_image(self, repository: str, tag: str) -> None:
        """A container image (not a chart) of one layer, pushed through the distribution
        API as any image tool would: blobs by monolithic upload, then the manifest."""
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = b"not a chart"
        for blob in (config, layer):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            url = f"http://{self.address}/v2/{repository}/blobs/uploads/?digest={digest}"
            urllib.request.urlopen(urllib.request.Request(url, blob, method="POST"), timeout=10)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        }
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            json.dumps(manifest).encode(),
            headers={"Content-Type": manifest["mediaType"]},
            method="PUT",
        )
        urllib.request.urlopen(request, timeout=10)

    def __enter__(self) -> OciRegistry:
        # Port 0: the registry picks a free port on localhost and logs it.
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(self.binary), "-port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # pytest's main thread starts it
            )
        deadline = time.monotonic() + 30
        while not self.address:
            found = re.search(r"serving on port (\d+)", self.log.read_text(errors="replace"))
            if found:
                self.address = f"127.0.0.1:{found.group(1)}"
                break
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"the registry did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=10) as answer:
            assert answer.status == 200
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            stop_processes([self._proc])


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(blob)}


class _Gate(http.server.BaseHTTPRequestHandler):
    server: _GateServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        gate = self.server.gate
        if self.path.startswith("/token?"):
            gate.token_requests.append(self.path)
            self._answer(
                200,
                {"Content-Type": "application/json"},
                json.dumps({"token": gate.token}).encode(),
            )
            return
        if self.headers.get("Authorization") != f"Bearer {gate.token}":
            scope = re.match(r"/v2/(.+)/(?:tags|manifests|blobs)/", self.path)
            wanted = f"repository:{scope.group(1)}:pull" if scope else "registry:catalog:*"
            challenge = (
                f'Bearer realm="http://{gate.address}/token",service="gate",scope="{wanted}"'
            )
            self._answer(401, {"WWW-Authenticate": challenge}, b"{}")
            return
        if gate.refuse_catalog and self.path.startswith("/v2/_catalog"):
            self._answer(403, {}, b"{}")
            return
        request = urllib.request.Request(f"http://{gate.upstream}{self.path}")
        if self.headers.get("Accept"):
            request.add_header("Accept", self.headers["Accept"])
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        if gate.tamper and gate.tamper in self.path:
            body += b"\0"
        kept = {k: v for k, v in headers.items() if k.lower() in ("content-type", "link")}
        self._answer(status, kept, body)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _GateServer(http.server.ThreadingHTTPServer):
    gate: RegistryGate


class RegistryGate:
    """A gate on 127.0.0.1 in front of a registry: every /v2/ request needs the anonymous
    token its realm (/token) hands out; the catalog may be refused, and the answers whose
    path holds `tamper` ("/blobs/", "/manifests/") get one byte more."""

    def __init__(self, upstream: str, *, refuse_catalog: bool = False, tamper: str = "") -> None:
        self.upstream = upstream
        self.refuse_catalog = refuse_catalog
        self.tamper = tamper
        self.token = "anonymous-" + secrets.token_hex(8)
        self.token_requests: list[str] = []
        self._server = _GateServer(("127.0.0.1", 0), _Gate)
        self._server.gate = self
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="registry-gate", daemon=True
        )

    def url(self, path: str = "charts") -> str:
        return f"oci+http://{self.address}/{path}"

    def __enter__(self) -> RegistryGate:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
