"""helm, run on behalf of one user: an argument list (no shell), that user's token in helm's
environment only (never on a command line, never in a message), and a helm home of their
own, so that Kubernetes RBAC decides what each user may do."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ApiServer",
    "Credentials",
    "Helm",
    "HelmError",
    "HelmMissing",
    "check_namespace",
    "check_release_name",
    "find_helm",
]

DEFAULT_TIMEOUT = 300.0
# helm's own limit (a release name becomes part of object names) and its pattern.
_RELEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_RELEASE_NAME_MAX = 53
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAMESPACE_MAX = 63
_REDACTED = "<token>"


class HelmMissing(RuntimeError):
    """No helm binary: the message says how to build one."""


class HelmError(Exception):
    """helm refused or failed: `message` is helm's own words, credentials removed."""

    def __init__(self, message: str, *, command: str, returncode: int) -> None:
        super().__init__(message)
        self.message = message
        self.command = command  # `helm install` and the like: never arguments or values
        self.returncode = returncode


@dataclass(frozen=True, slots=True)
class ApiServer:
    """The cluster every user's helm talks to."""

    url: str
    ca_file: Path | None = None
    insecure: bool = False  # skip TLS verification (test control planes only)


@dataclass(frozen=True, slots=True)
class Credentials:
    """One user's bearer token (a service-account or OIDC ID token)."""

    token: str = field(repr=False)

    @property
    def key(self) -> str:
        """A name for the user's helm home that does not reveal the token."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:24]


def check_release_name(name: str) -> str:
    if len(name) > _RELEASE_NAME_MAX or not _RELEASE_NAME.fullmatch(name):
        raise ValueError(
            f"release name {name[:80]!r}: lowercase letters, digits, '-' and '.', starting "
            f"and ending with a letter or digit, at most {_RELEASE_NAME_MAX} characters"
        )
    return name


def check_namespace(name: str) -> str:
    if len(name) > _NAMESPACE_MAX or not _NAMESPACE.fullmatch(name):
        raise ValueError(
            f"namespace {name[:80]!r}: lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, at most {_NAMESPACE_MAX} characters"
        )
    return name


def find_helm() -> Path:
    """$NFTPROXY_HELM, else the one hack/dashboard/build.sh built, else helm on PATH."""
    given = os.environ.get("NFTPROXY_HELM")
    if given:
        return Path(given)
    cache = os.environ.get("NFTPROXY_DASHBOARD_CACHE") or Path.home() / ".cache/nftproxy/dashboard"
    built = Path(cache) / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which("helm")
    if found:
        return Path(found)
    raise HelmMissing("no helm binary: run hack/dashboard/build.sh (or set NFTPROXY_HELM)")


class Helm:
    """helm for many users: each call names the user, whose token goes into helm's
    environment and whose helm home (cache, config, data) is theirs alone."""

    def __init__(
        self,
        binary: Path,
        server: ApiServer,
        homes: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.binary = binary
        self.server = server
        self.homes = homes
        self.timeout = timeout

    # -- what users do ---------------------------------------------------------------------

    def version(self) -> str:
        return self.run(["version", "--template", "{{.Version}}"]).strip()

    def install(
        self,
        user: Credentials,
        release: str,
        chart: str,
        namespace: str,
        values: Mapping[str, Any],
        *,
        version: str | None = None,
        repo: str | None = None,
    ) -> dict[str, Any]:
        """Install `chart` (a name in `repo`, an oci:// reference or a .tgz) as `release`;
        helm's JSON account of the release. Values go through stdin, never argv."""
        args = ["install", check_release_name(release), chart, *self._source(version, repo)]
        args += ["--namespace", check_namespace(namespace), "--values", "-", "--output", "json"]
        return self._json(self.run(args, user, stdin=json.dumps(dict(values))))

    def upgrade(
        self,
        user: Credentials,
        release: str,
        chart: str,
        namespace: str,
        values: Mapping[str, Any],
        *,
        version: str | None = None,
        repo: str | None = None,
    ) -> dict[str, Any]:
        args = ["upgrade", check_release_name(release), chart, *self._source(version, repo)]
        args += ["--namespace", check_namespace(namespace), "--values", "-", "--output", "json"]
        return self._json(self.run(args, user, stdin=json.dumps(dict(values))))

    def rollback(self, user: Credentials, release: str, namespace: str, revision: int) -> None:
        if revision < 1:
            raise ValueError(f"revision {revision}: revisions start at 1")
        args = ["rollback", check_release_name(release), str(revision)]
        self.run([*args, "--namespace", check_namespace(namespace)], user)

    def uninstall(self, user: Credentials, release: str, namespace: str) -> None:
        args = ["uninstall", check_release_name(release), "--namespace", check_namespace(namespace)]
        self.run(args, user)

    def releases(self, user: Credentials, namespace: str) -> list[dict[str, Any]]:
        # Every state a user should see, not only helm's default (deployed or failed).
        states = ["--deployed", "--failed", "--pending", "--uninstalling"]
        args = ["list", "--namespace", check_namespace(namespace), *states, "--output", "json"]
        found = json.loads(self.run(args, user) or "[]")
        return found if isinstance(found, list) else []

    def history(self, user: Credentials, release: str, namespace: str) -> list[dict[str, Any]]:
        args = ["history", check_release_name(release), "--namespace", check_namespace(namespace)]
        found = json.loads(self.run([*args, "--output", "json"], user) or "[]")
        return found if isinstance(found, list) else []

    def template(
        self,
        release: str,
        chart: str,
        namespace: str,
        values: Mapping[str, Any],
        *,
        version: str | None = None,
        repo: str | None = None,
    ) -> str:
        """The manifests an install would create, rendered without the cluster."""
        args = ["template", check_release_name(release), chart, *self._source(version, repo)]
        args += ["--namespace", check_namespace(namespace), "--values", "-"]
        return self.run(args, stdin=json.dumps(dict(values)))

    # -- running it ------------------------------------------------------------------------

    def run(
        self, args: Sequence[str], user: Credentials | None = None, *, stdin: str | None = None
    ) -> str:
        """helm's standard output; HelmError with its message when it fails."""
        home = self._home(user)
        try:
            proc = subprocess.run(
                [str(self.binary), *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=self.environment(user, home),
                cwd=home,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise HelmError(
                f"helm did not finish within {self.timeout:.0f} s",
                command=_command(args),
                returncode=-1,
            ) from None
        if proc.returncode != 0:
            text = _clean(proc.stderr or proc.stdout, user)
            raise HelmError(text, command=_command(args), returncode=proc.returncode)
        return proc.stdout

    def environment(self, user: Credentials | None, home: Path) -> dict[str, str]:
        """All that helm gets: no inherited KUBECONFIG, proxy or home; the user's token
        (if any) and the API server; helm's cache, config and data under `home`."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }
        if user is None:
            return env
        env["HELM_KUBEAPISERVER"] = self.server.url
        env["HELM_KUBETOKEN"] = user.token
        if self.server.ca_file is not None:
            env["HELM_KUBECAFILE"] = str(self.server.ca_file)
        if self.server.insecure:
            env["HELM_KUBEINSECURE_SKIP_TLS_VERIFY"] = "true"
        return env

    def _home(self, user: Credentials | None) -> Path:
        home = self.homes / (user.key if user is not None else "anonymous")
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An empty kubeconfig: nothing of the dashboard's own environment reaches helm.
        (home / "no-kubeconfig").touch(mode=0o600, exist_ok=True)
        return home

    @staticmethod
    def _source(version: str | None, repo: str | None) -> list[str]:
        out: list[str] = []
        if version:
            out += ["--version", version]
        if repo:
            out += ["--repo", repo]
        return out

    @staticmethod
    def _json(text: str) -> dict[str, Any]:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise HelmError(
                "helm answered something other than a release", command="", returncode=0
            )
        return doc


def _command(args: Sequence[str]) -> str:
    return f"helm {args[0]}" if args else "helm"


def _clean(text: str, user: Credentials | None) -> str:
    """helm's message without the token: its `Error:` lines when there are any (helm 4
    logs the same failure once more as a `level=ERROR` line), else all it said."""
    if user is not None and user.token:
        text = text.replace(user.token, _REDACTED)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return "\n".join(errors or lines) or "helm failed without a message"
