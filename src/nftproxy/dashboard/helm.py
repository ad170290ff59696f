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

from nftproxy.kube.client import ClusterConfig

__all__ = [
    "ApiServer",
    "Credentials",
    "Helm",
    "HelmError",
    "HelmMissing",
    "check_chart",
    "check_namespace",
    "check_release_name",
    "check_repo_url",
    "check_version",
    "find_helm",
    "oci_chart",
]

DEFAULT_TIMEOUT = 300.0
# helm's own limit (a release name becomes part of object names) and its pattern.
_RELEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_RELEASE_NAME_MAX = 53
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAMESPACE_MAX = 63
_REDACTED = "<token>"
# A chart in a repository by name, or an OCI reference; never something helm reads as a flag.
_CHART = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}|oci://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?(/[A-Za-z0-9._-]+)+"
)
# A repository URL of an OCI registry (the catalog's grammar: oci://, or oci+http:// for
# plain HTTP; the charts it names after '#' are the catalog's business), and a chart in it.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_OCI_REPO = re.compile(
    rf"(oci|oci\+http)://([A-Za-z0-9](?:[A-Za-z0-9.-]{{0,252}}[A-Za-z0-9])?(?::[0-9]{{1,5}})?)"
    rf"((?:/{_COMPONENT})*)/?(?:#[a-z0-9._,-]*)?"
)
# A version or a constraint (">=1.2, <2"), not starting with '-'.
_VERSION = re.compile(r"[0-9A-Za-z.+~^<>=*][0-9A-Za-z.+~^<>=*, -]{0,99}")
_MAX_OUTPUT = 32 << 20  # bytes of helm's answer kept (rendered manifests included)


class HelmMissing(RuntimeError):
    """No helm binary: the message says how to build one."""


class HelmError(Exception):
    """helm refused or failed: `message` is helm's own words, credentials removed."""

    def __init__(self, message: str, *, command: str, returncode: int) -> None:
        super().__init__(message)
        self.message = message
        self.command = command  # `helm install` and the like: never arguments or values
        self.returncode = returncode

    @property
    def forbidden(self) -> bool:
        """The cluster's RBAC refused it (helm passes the API server's words on)."""
        return "forbidden" in self.message.lower()

    @property
    def not_found(self) -> bool:
        return "not found" in self.message.lower()


@dataclass(frozen=True, slots=True)
class ApiServer:
    """The cluster every user's helm talks to."""

    url: str
    ca_file: Path | None = None
    insecure: bool = False  # skip TLS verification (test control planes only)

    def config(self, user: Credentials) -> ClusterConfig:
        """How to reach this API server as `user`, for the dashboard's own requests."""
        return ClusterConfig(
            server=self.url,
            token=user.token,
            ca_file=str(self.ca_file) if self.ca_file is not None else None,
            insecure=self.insecure,
        )


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


def check_chart(chart: str) -> str:
    if not _CHART.fullmatch(chart):
        raise ValueError(f"chart {chart[:80]!r}: a chart name or an oci:// reference")
    return chart


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise ValueError(f"version {version[:80]!r}: a version or a version constraint")
    return version


def check_repo_url(url: str) -> str:
    if not re.fullmatch(r"https?://[^\s]{1,2000}", url):
        raise ValueError(f"repository {url[:80]!r}: an http(s) URL")
    return url


def oci_chart(repo: str, chart: str) -> tuple[str, bool] | None:
    """The oci:// reference of `chart` in the OCI repository `repo`, and whether helm must
    use plain HTTP (`--plain-http`, for an oci+http:// repository); None when `repo` is not
    an OCI one."""
    if not repo.startswith(("oci://", "oci+http://")):
        return None
    m = _OCI_REPO.fullmatch(repo)
    if m is None:
        raise ValueError(f"repository {repo[:80]!r}: an oci://HOST[:PORT]/PATH URL")
    if not re.fullmatch(_COMPONENT, chart):
        raise ValueError(f"chart {chart[:80]!r}: a chart's name in an OCI registry")
    scheme, registry, path = m.groups()
    return f"oci://{registry}{path}/{chart}", scheme == "oci+http"


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
        """Install `chart` (a name in `repo`, which is an http(s) or OCI repository, or an
        oci:// reference) as `release`; helm's JSON account of the release. Values go
        through stdin, never argv."""
        source, ref = self._source(chart, version, repo)
        args = ["install", *source, "--namespace", check_namespace(namespace)]
        args += ["--values", "-", "--output", "json", "--", check_release_name(release), ref]
        out = self.run(args, user, stdin=json.dumps(dict(values)))
        return self._json(_after_pull_notes(out, "{"), args)

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
        source, ref = self._source(chart, version, repo)
        args = ["upgrade", *source, "--namespace", check_namespace(namespace)]
        args += ["--values", "-", "--output", "json", "--", check_release_name(release), ref]
        out = self.run(args, user, stdin=json.dumps(dict(values)))
        return self._json(_after_pull_notes(out, "{"), args)

    def rollback(self, user: Credentials, release: str, namespace: str, revision: int) -> None:
        if revision < 1:
            raise ValueError(f"revision {revision}: revisions start at 1")
        args = ["rollback", "--namespace", check_namespace(namespace), "--"]
        self.run([*args, check_release_name(release), str(revision)], user)

    def uninstall(self, user: Credentials, release: str, namespace: str) -> None:
        args = ["uninstall", "--namespace", check_namespace(namespace), "--"]
        self.run([*args, check_release_name(release)], user)

    def releases(self, user: Credentials, namespace: str) -> list[dict[str, Any]]:
        # Every state a user should see, not only helm's default (deployed or failed).
        states = ["--deployed", "--failed", "--pending", "--uninstalling"]
        args = ["list", "--namespace", check_namespace(namespace), *states, "--output", "json"]
        return self._json_list(self.run(args, user), args)

    def history(self, user: Credentials, release: str, namespace: str) -> list[dict[str, Any]]:
        args = ["history", "--namespace", check_namespace(namespace), "--output", "json", "--"]
        args.append(check_release_name(release))
        return self._json_list(self.run(args, user), args)

    def values(self, user: Credentials, release: str, namespace: str) -> dict[str, Any]:
        """The values the user gave the release (not the chart's defaults)."""
        args = ["get", "values", "--namespace", check_namespace(namespace), "--output", "json"]
        args += ["--", check_release_name(release)]
        text = self.run(args, user).strip()
        return {} if text in ("", "null") else self._json(text, args)

    def metadata(self, user: Credentials, release: str, namespace: str) -> dict[str, Any]:
        """The deployed revision's chart name and version, app version, status."""
        args = ["get", "metadata", "--namespace", check_namespace(namespace), "--output", "json"]
        return self._json(self.run([*args, "--", check_release_name(release)], user), args)

    def manifest(self, user: Credentials, release: str, namespace: str) -> str:
        """The manifests the deployed revision made."""
        args = ["get", "manifest", "--namespace", check_namespace(namespace), "--"]
        return self.run([*args, check_release_name(release)], user)

    def notes(self, user: Credentials, release: str, namespace: str) -> str:
        args = ["get", "notes", "--namespace", check_namespace(namespace), "--"]
        try:
            return self.run([*args, check_release_name(release)], user)
        except HelmError as exc:
            if "no notes" in exc.message.lower():
                return ""
            raise

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
        source, ref = self._source(chart, version, repo)
        args = ["template", *source, "--namespace", check_namespace(namespace)]
        args += ["--values", "-", "--", check_release_name(release), ref]
        return _after_pull_notes(self.run(args, stdin=json.dumps(dict(values))), "---")

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
            text = _clean((proc.stderr or proc.stdout)[-65536:], user)
            raise HelmError(text, command=_command(args), returncode=proc.returncode)
        if len(proc.stdout) > _MAX_OUTPUT:
            raise HelmError(
                f"helm answered more than {_MAX_OUTPUT:,} characters",
                command=_command(args),
                returncode=0,
            )
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
        home.chmod(0o700)  # also when it was there before
        # An empty kubeconfig: nothing of the dashboard's own environment reaches helm.
        (home / "no-kubeconfig").touch(mode=0o600, exist_ok=True)
        return home

    @staticmethod
    def _source(chart: str, version: str | None, repo: str | None) -> tuple[list[str], str]:
        """helm's flags saying where the chart comes from, and the chart's reference: a
        chart in an OCI repository is named by its oci:// reference, not by --repo."""
        out: list[str] = []
        if version:
            out += ["--version", check_version(version)]
        oci = oci_chart(repo, chart) if repo else None
        if oci is not None:
            ref, plain_http = oci
            return out + (["--plain-http"] if plain_http else []), check_chart(ref)
        if repo:
            out += ["--repo", check_repo_url(repo)]
        return out, check_chart(chart)

    @staticmethod
    def _json(text: str, args: Sequence[str]) -> dict[str, Any]:
        doc = _decoded(text, args)
        if not isinstance(doc, dict):
            raise HelmError(
                "helm did not answer with a release", command=_command(args), returncode=0
            )
        return doc

    @staticmethod
    def _json_list(text: str, args: Sequence[str]) -> list[dict[str, Any]]:
        doc = _decoded(text or "[]", args)
        if not isinstance(doc, list):
            raise HelmError("helm did not answer with a list", command=_command(args), returncode=0)
        return [item for item in doc if isinstance(item, dict)]


def _decoded(text: str, args: Sequence[str]) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise HelmError("helm's answer is not JSON", command=_command(args), returncode=0) from None


def _after_pull_notes(text: str, start: str) -> str:
    """helm's answer without what it says on the same standard output when it pulls a chart
    from an OCI registry ("Pulled: ...", "Digest: ..." and, for a version with '+', a note
    on tags): the answer starts at the first line that starts with `start`."""
    if not text.startswith("Pulled: "):
        return text
    lines = text.splitlines(keepends=True)
    return next(("".join(lines[i:]) for i, line in enumerate(lines) if line.startswith(start)), "")


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
