#!/usr/bin/env python3
"""App dashboard benchmark: `nftproxy dashboard` with N Helm releases and a big chart index.

    python bench/dashboard.py [--releases 1000] [--namespaces 100] [--versions 5000]
                              [--rounds 20] [--deploys 5] [--json]
                              [--out bench/results/dashboard-<date>.json]
                              [--markdown docs/benchmarks.md] [--profile auto|always|never]

Starts etcd + kube-apiserver on loopback (nftproxy.lab.apiserver), M namespaces, one user (a
service account whose token comes from a TokenRequest; a ClusterRole bound in each of the M
namespaces lets it manage Secrets, ConfigMaps, Services and Deployments there) and a chart
repository on loopback whose index.yaml lists K chart versions (one of them, bench-app
1.0.0, a real chart packaged by helm). A few releases are installed with helm as that user,
the rest are their Helm storage Secrets written through the API. Then `python -m nftproxy
dashboard` runs as a process of its own and this script, signed in with the user's token,
times over HTTP on loopback:

1. GET /apps (every release the user may see, in M namespaces);
2. GET /catalog?q=... (searching the K versions' index);
3. POST /deploy -> the release's Secret in the API, beside the same helm install run by
   this script (how much of the deploy is helm's);
4. the dashboard's VmRSS and VmHWM after all of it.

When /apps is over its goal, one /apps request is profiled (cProfile) in this process on a
dashboard app built the same way. Every process started here (etcd, kube-apiserver, the
dashboard) is stopped by PID and the temporary directory removed at the end, also after an
error, Ctrl-C or SIGTERM; nothing leaves 127.0.0.1. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import cProfile
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import pstats
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from common import (  # bench/common.py
    Api,
    machine_info,
    on_signal,
    pct,
    proc_cpu_s,
    proc_mem_mb,
    save_report,
    write_markdown,
)

from nftproxy.dashboard.helm import ApiServer, Credentials, Helm, HelmError, HelmMissing, find_helm
from nftproxy.lab import apiserver as kube
from nftproxy.lab.charts import HttpChartRepo, write_chart
from nftproxy.lab.processes import die_with_parent, stop_processes

ROOT = Path(__file__).resolve().parent.parent

GOALS = {"apps_p95_ms": 200.0, "catalog_p95_ms": 100.0, "deploy_s": 2.0, "rss_mb": 200.0}
MARK_BEGIN = "<!-- dashboard:begin -->"
MARK_END = "<!-- dashboard:end -->"

CHART, CHART_VERSION, REPO_NAME = "bench-app", "1.0.0", "bench"
REAL_INSTALLS = 3  # releases helm installs itself; the others are copies of their Secrets
HISTORY_EVERY, HISTORY = 10, 3  # every 10th release has 3 revisions (2 superseded)
VERSIONS_PER_CHART = 10
WRITERS = 8  # Secrets written at once
USER_NAMESPACE = "dashboard-bench-users"
USER = "tenant"
WORDS = (
    "web",
    "cache",
    "queue",
    "database",
    "metrics",
    "logging",
    "auth",
    "mail",
    "search",
    "storage",
)
QUERIES = ("", "cache", "cache 12", "database service", "no-such-chart")
REQUEST_TIMEOUT = 300.0
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def mono() -> float:
    return time.monotonic()


def summary(seconds: list[float]) -> dict[str, Any]:
    """Request times in ms: count, p50, p95 (nearest rank), min, max, mean."""
    ms = [s * 1e3 for s in seconds]
    if not ms:
        return {"count": 0}
    return {
        "count": len(ms),
        "p50": pct(ms, 0.50),
        "p95": pct(ms, 0.95),
        "min": min(ms),
        "max": max(ms),
        "mean": statistics.fmean(ms),
    }


# --- the chart and the repository index ------------------------------------------------

VALUES = (
    "replicaCount: 1\n"
    "image:\n  repository: registry.invalid/bench/app\n  tag: '1.0'\n  pullPolicy: IfNotPresent\n"
    "service:\n  type: ClusterIP\n  port: 80\n"
    "resources:\n  requests:\n    cpu: 10m\n    memory: 16Mi\n  limits:\n    memory: 64Mi\n"
    "settings:\n" + "".join(f"  key{k:02d}: value number {k} of the bench app\n" for k in range(24))
)
TEMPLATES = {
    "configmap.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
{{- range $k, $v := .Values.settings }}
  {{ $k }}: {{ $v | quote }}
{{- end }}
""",
    "service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  type: {{ .Values.service.type }}
  ports:
  - port: {{ .Values.service.port }}
    targetPort: 8080
    protocol: TCP
    name: http
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
""",
    "deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
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
      - name: app
        image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        ports:
        - containerPort: 8080
        envFrom:
        - configMapRef:
            name: {{ .Release.Name }}-config
        resources: {{- toYaml .Values.resources | nindent 10 }}
""",
    "NOTES.txt": "{{ .Release.Name }} is installed in {{ .Release.Namespace }}.\n",
}


def chart_names(versions: int) -> list[tuple[str, int]]:
    """(chart, how many versions) adding up to `versions`; the first is the real chart."""
    counts = [VERSIONS_PER_CHART] * (versions // VERSIONS_PER_CHART)
    if versions % VERSIONS_PER_CHART:
        counts.append(versions % VERSIONS_PER_CHART)
    return [
        (CHART if c == 0 else f"{WORDS[c % len(WORDS)]}-{c:03d}", n) for c, n in enumerate(counts)
    ]


def write_index(directory: Path, base_url: str, versions: int, archive: bytes) -> dict[str, Any]:
    """index.yaml with `versions` chart versions: bench-app 1.0.0 is `archive` (its digest
    and URL real), every other version is listed only (its archive is never fetched)."""
    q = json.dumps  # a JSON string is a YAML scalar
    out = io.StringIO()
    out.write("apiVersion: v1\nentries:\n")
    charts = chart_names(versions)
    for c, (name, count) in enumerate(charts):
        word = WORDS[c % len(WORDS)]
        out.write(f"  {name}:\n")
        for v in range(count):
            real = name == CHART and v == 0
            version = CHART_VERSION if real else f"0.{count - v}.{c % 7}"
            digest = (
                hashlib.sha256(archive).hexdigest()
                if real
                else hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
            )
            description = (
                f"{name} for tests"
                if name == CHART
                else f"A {word} service (number {c}) for the dashboard benchmark"
            )
            out.write(
                f"  - apiVersion: v2\n    appVersion: {q('1.0.0' if real else f'{c % 5}.{v}.0')}\n"
                f"    created: {q(f'2026-12-{1 + v % 28:02d}T10:00:00.000000Z')}\n"
                f"    description: {q(description)}\n    digest: {digest}\n"
                f"    name: {name}\n    type: application\n"
                f"    urls:\n    - {q(f'{base_url}/{name}-{version}.tgz')}\n"
                f"    version: {q(version)}\n"
            )
    out.write(f"generated: {q('2026-12-07T00:00:00Z')}\n")
    text = out.getvalue()
    (directory / "index.yaml").write_text(text)
    return {"charts": len(charts), "versions": versions, "index_bytes": len(text)}


# --- Helm's storage: a release is a Secret of base64(gzip(JSON)) ---------------------------


def decode_release(secret: dict[str, Any]) -> dict[str, Any]:
    """The release in a helm.sh/release.v1 Secret (its data is base64 of helm's base64)."""
    raw = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    if raw[:3] == b"\x1f\x8b\x08":
        raw = gzip.decompress(raw)
    release: dict[str, Any] = json.loads(raw)
    return release


def encode_release(release: dict[str, Any]) -> str:
    """Secret data for a release: helm gzips its JSON and base64s that; the API's data is
    base64 once more."""
    packed = gzip.compress(json.dumps(release, separators=(",", ":")).encode(), compresslevel=9)
    return base64.b64encode(base64.b64encode(packed)).decode()


def storage_secret(
    release: dict[str, Any], labels: dict[str, str], status: str
) -> tuple[dict[str, Any], int]:
    """The Secret helm would write for `release` (name, namespace, version set), its size."""
    name, revision = release["name"], int(release["version"])
    data = encode_release(release)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "helm.sh/release.v1",
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v{revision}",
            "namespace": release["namespace"],
            "labels": {**labels, "name": name, "status": status, "version": str(revision)},
        },
        "data": {"release": data},
    }
    return body, len(data)


def copy_release(
    template: dict[str, Any], old_name: str, name: str, namespace: str, revision: int
) -> dict[str, Any]:
    release = dict(template)  # the top-level keys changed here only
    release.update(name=name, namespace=namespace, version=revision)
    release["manifest"] = str(template.get("manifest", "")).replace(old_name, name)
    info = dict(template.get("info") or {})
    if "notes" in info:
        info["notes"] = str(info["notes"]).replace(old_name, name)
    release["info"] = info
    return release


def release_name(i: int) -> str:
    return f"app-{i:04d}"


def namespace_name(k: int) -> str:
    return f"dash-{k:03d}"


# --- setting the cluster up ------------------------------------------------------------


def ok(api: Api, method: str, path: str, body: Any = None, want: tuple[int, ...] = (201,)) -> Any:
    status, got = api.request(method, path, body)
    if status not in want:
        raise RuntimeError(f"{method} {path}: {status} {str(got)[:300]}")
    return got


def parallel(fn: Callable[[int], Any], count: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(WRITERS) as pool:
        for _ in pool.map(fn, range(count)):
            pass


def make_user(api: Api, namespaces: list[str]) -> str:
    """A service account with a ClusterRole bound in each namespace; a token for it."""
    ok(api, "POST", "/api/v1/namespaces", {"metadata": {"name": USER_NAMESPACE}})
    ok(
        api,
        "POST",
        f"/api/v1/namespaces/{USER_NAMESPACE}/serviceaccounts",
        {"metadata": {"name": USER}},
    )
    rules = [
        {
            "apiGroups": [""],
            "resources": ["secrets", "configmaps", "services"],
            "verbs": ["*"],
        },
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]},
    ]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    role = {"metadata": {"name": "dashboard-bench-tenant"}, "rules": rules}
    ok(api, "POST", f"{rbac}/clusterroles", role)

    def bind(k: int) -> None:
        binding = {
            "metadata": {"name": "tenant"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "dashboard-bench-tenant",
            },
            "subjects": [{"kind": "ServiceAccount", "name": USER, "namespace": USER_NAMESPACE}],
        }
        ok(api, "POST", f"{rbac}/namespaces/{namespaces[k]}/rolebindings", binding)

    parallel(bind, len(namespaces))
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 6 * 3600},
    }
    got = ok(
        api, "POST", f"/api/v1/namespaces/{USER_NAMESPACE}/serviceaccounts/{USER}/token", request
    )
    return str(got["status"]["token"])


def install_real(
    helm: Helm, user: Credentials, namespaces: list[str], count: int, repo: str, log: Any
) -> dict[str, Any]:
    """`count` releases installed by helm as the user; the first upgraded to revision 3."""
    times = []
    for i in range(count):
        t = mono()
        helm.install(
            user,
            release_name(i),
            CHART,
            namespaces[i % len(namespaces)],
            {},
            version=CHART_VERSION,
            repo=repo,
        )
        times.append(mono() - t)
    upgrades = []
    for revision in range(2, HISTORY + 1):
        t = mono()
        helm.upgrade(
            user,
            release_name(0),
            CHART,
            namespaces[0],
            {"replicaCount": revision},
            version=CHART_VERSION,
            repo=repo,
        )
        upgrades.append(mono() - t)
    log(f"helm installed {count} releases ({', '.join(f'{s:.2f}' for s in times)} s)")
    return {"install_s": times, "upgrade_s": upgrades}


def replicate(
    api: Api, namespaces: list[str], releases: int, first: int, log: Any
) -> dict[str, Any]:
    """Releases `first`..`releases`-1 as copies of release 0's storage Secrets (its revision
    1 as the superseded ones, its last as the deployed one), written through the API."""
    selector = f"owner%3Dhelm%2Cname%3D{release_name(0)}"
    found = ok(
        api,
        "GET",
        f"/api/v1/namespaces/{namespaces[0]}/secrets?labelSelector={selector}",
        want=(200,),
    )
    by_revision = {int(s["metadata"]["labels"]["version"]): s for s in found["items"]}
    if sorted(by_revision) != list(range(1, HISTORY + 1)):
        raise RuntimeError(f"release 0 has revisions {sorted(by_revision)}, not 1..{HISTORY}")
    superseded, deployed = decode_release(by_revision[1]), decode_release(by_revision[HISTORY])
    if superseded["info"]["status"] != "superseded" or deployed["info"]["status"] != "deployed":
        raise RuntimeError("release 0's revisions are not superseded ... deployed")
    labels = dict(by_revision[HISTORY]["metadata"]["labels"])
    old = release_name(0)
    work: list[tuple[dict[str, Any], int]] = []
    for i in range(first, releases):
        name, ns = release_name(i), namespaces[i % len(namespaces)]
        revisions = HISTORY if i % HISTORY_EVERY == 0 else 1
        for revision in range(1, revisions + 1):
            last = revision == revisions
            release = copy_release(deployed if last else superseded, old, name, ns, revision)
            work.append(storage_secret(release, labels, "deployed" if last else "superseded"))
    sizes = [size for _, size in work]
    errors: list[str] = []

    def write(k: int) -> None:
        body = work[k][0]
        path = f"/api/v1/namespaces/{body['metadata']['namespace']}/secrets"
        status, got = api.request("POST", path, body)
        if status != 201:
            errors.append(f"{body['metadata']['name']}: {status} {str(got)[:200]}")

    t = mono()
    parallel(write, len(work))
    wall = mono() - t
    if errors:
        raise RuntimeError(f"{len(errors)} Secrets not written: {'; '.join(errors[:3])}")
    log(f"wrote {len(work)} release Secrets in {wall:.1f}s ({len(work) / wall:.0f}/s)")
    return {
        "secrets": len(work),
        "seconds": wall,
        "per_second": len(work) / wall if wall else None,
        "release_data_bytes_mean": statistics.fmean(sizes) if sizes else 0,
        "release_json_bytes": len(json.dumps(deployed, separators=(",", ":"))),
    }


def expected_releases(releases: int, namespaces: int) -> dict[int, int]:
    counts = dict.fromkeys(range(namespaces), 0)
    for i in range(releases):
        counts[i % namespaces] += 1
    return counts


# --- the dashboard process -------------------------------------------------------------

_procs: list[subprocess.Popen[Any]] = []


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment without proxies (loopback only) and a TMPDIR of ours, where the
    dashboard keeps its users' helm homes."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["TMPDIR"] = str(tmp)
    env.pop("KUBECONFIG", None)
    return env


def start_dashboard(
    kubeconfig: Path, repo_url: str, helm: Path, port: int, tmp: Path
) -> tuple[subprocess.Popen[Any], Path]:
    argv = [
        sys.executable,
        "-m",
        "nftproxy",
        "dashboard",
        "--listen",
        f"127.0.0.1:{port}",
        "--kubeconfig",
        str(kubeconfig),
        "--repo",
        f"{REPO_NAME}={repo_url}",
        "--helm",
        str(helm),
    ]
    log_path = tmp / "dashboard.log"
    (tmp / "dashboard-tmp").mkdir()
    with open(log_path, "wb") as logf:
        # From the main thread: PR_SET_PDEATHSIG (tied to the forking thread) then kills the
        # dashboard if this script dies without cleaning up.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=clean_env(tmp / "dashboard-tmp"),
            preexec_fn=die_with_parent,
        )
    _procs.append(proc)
    return proc, log_path


def wait_ready(client: httpx2.Client, proc: subprocess.Popen[Any], log_path: Path) -> float:
    t = mono()
    while mono() - t < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"dashboard exited with {proc.returncode}: {tail(log_path)}")
        with contextlib.suppress(httpx2.TransportError):
            if client.get("/signin").status_code == 200:
                return mono() - t
        time.sleep(0.05)
    raise RuntimeError(f"dashboard not serving within 60 s: {tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_all() -> None:
    stop_processes(list(_procs), grace=10)
    _procs.clear()


# --- talking to the dashboard ----------------------------------------------------------


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def sign_in(client: Any, token: str) -> Any:
    """Sign in through the pages (cookies kept by the client); the /apps page after it."""
    form = client.get("/signin")
    answer = client.post("/signin", data={"csrf": csrf_of(form.text), "token": token})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in: {answer.status_code} {answer.text[:300]}")
    return answer


def get(client: httpx2.Client, path: str, **params: str) -> tuple[float, httpx2.Response]:
    t = mono()
    answer = client.get(path, params=params or None)
    answer.read()
    elapsed = mono() - t
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path} {params}: {answer.status_code} {answer.text[:300]}")
    return elapsed, answer


def rounds_within(rounds: int, budget: float, fn: Callable[[int], float]) -> list[float]:
    """`fn(k)`'s times for k = 0..rounds-1, stopping early once `budget` seconds have passed."""
    out: list[float] = []
    end = mono() + budget
    for k in range(rounds):
        out.append(fn(k))
        if mono() > end:
            break
    return out


class CpuMeter:
    """CPU seconds of the dashboard (its own and its helm children's), kube-apiserver and
    etcd over one phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        out["helm (dashboard's children)"] = proc_cpu_s(self.pids["dashboard"], children=True)
        return out

    def used(self) -> dict[str, float]:
        now = self._now()
        return {k: round(now[k] - self.start[k], 2) for k in now}


def helm_alone(helm: Helm, user: Credentials, namespace: str, rounds: int) -> dict[str, Any]:
    """What one helm process costs, run here: `helm version` (start-up, no cluster) and the
    `helm list` /apps runs for each namespace, on one of them."""
    version, listing = [], []
    for _ in range(rounds):
        t = mono()
        helm.version()
        version.append(mono() - t)
        t = mono()
        helm.releases(user, namespace)
        listing.append(mono() - t)
    return {"version_ms": summary(version), "list_ms": summary(listing), "namespace": namespace}


def apps_phase(
    client: httpx2.Client, rounds: int, budget: float, expect: int, pids: dict[str, int], log: Any
) -> dict[str, Any]:
    first, page = get(client, "/apps")
    shown = page.text.count('href="/apps/')
    if shown != expect:
        raise RuntimeError(f"/apps shows {shown} releases, not {expect}")
    log(f"/apps: first {first * 1e3:.0f} ms, {shown} releases, {len(page.content)} bytes")
    cpu = CpuMeter(pids)
    t = mono()
    times = rounds_within(rounds, budget, lambda _: get(client, "/apps")[0])
    wall = mono() - t
    res = {
        "first_ms": first * 1e3,
        "ms": summary(times),
        "releases_shown": shown,
        "page_bytes": len(page.content),
        "cpu_s": cpu.used(),
        "wall_s": wall,
        "loadavg": os.getloadavg(),
    }
    log(
        f"/apps: p50 {res['ms']['p50']:.0f} ms, p95 {res['ms']['p95']:.0f} ms ({len(times)} rounds)"
    )
    return res


def catalog_phase(
    client: httpx2.Client, rounds: int, budget: float, charts: int, pids: dict[str, int], log: Any
) -> dict[str, Any]:
    first, page = get(client, "/catalog", q="")
    rows = chart_rows(page.text)
    if rows != charts:
        raise RuntimeError(f"/catalog lists {rows} charts, not {charts}")
    log(f"/catalog: first (fetches and parses index.yaml) {first * 1e3:.0f} ms, {rows} charts")
    cpu = CpuMeter(pids)
    per: dict[str, list[float]] = {q: [] for q in QUERIES}

    def one(k: int) -> float:
        # Every query once per round, so that all see the same conditions.
        total = 0.0
        for q in QUERIES:
            elapsed, _ = get(client, "/catalog", q=q)
            per[q].append(elapsed)
            total += elapsed
        return total

    rounds_within(rounds, budget, one)
    every = [s for times in per.values() for s in times]
    res = {
        "first_ms": first * 1e3,
        "ms": summary(every),
        "by_query": {q: summary(times) for q, times in per.items()},
        "matches": {q: chart_rows(get(client, "/catalog", q=q)[1].text) for q in QUERIES},
        "cpu_s": cpu.used(),
        "loadavg": os.getloadavg(),
    }
    log(
        f"/catalog: p50 {res['ms']['p50']:.1f} ms, p95 {res['ms']['p95']:.1f} ms "
        f"({len(every)} requests)"
    )
    return res


def chart_rows(html: str) -> int:
    return max(0, html.count("<tr>") - 1)  # less the header row


def secret_seen(api: Api, namespace: str, release: str, deadline: float) -> bool:
    path = f"/api/v1/namespaces/{namespace}/secrets/sh.helm.release.v1.{release}.v1"
    while mono() < deadline:
        status, _ = api.request("GET", path)
        if status == 200:
            return True
        time.sleep(0.02)
    return False


def deploy_phase(
    client: httpx2.Client,
    api: Api,
    helm: Helm,
    user: Credentials,
    namespaces: list[str],
    repo_url: str,
    archive: Path,
    deploys: int,
    pids: dict[str, int],
    log: Any,
) -> dict[str, Any]:
    """Each round: the deploy form submitted (POST /deploy) until the release's Secret is in
    the API; then the same install by helm run here, from the repository and from the
    archive on disk. The form page (GET /deploy) is loaded once first, as a user would."""
    chart = {"repo": REPO_NAME, "chart": CHART, "version": CHART_VERSION}
    form_s, form = get(client, "/deploy", **chart)
    csrf = csrf_of(form.text)
    log(f"GET /deploy (the form; reads the chart, reviews access): {form_s * 1e3:.0f} ms")
    cpu = CpuMeter(pids)
    total, post, direct_repo, direct_file = [], [], [], []
    for k in range(deploys):
        ns = namespaces[(k * 7 + 3) % len(namespaces)]
        name = f"deployed-{k}"
        t = mono()
        answer = client.post(
            "/deploy",
            data={
                **chart,
                "csrf": csrf,
                "release": name,
                "namespace": ns,
                "source": "yaml",
                "values_yaml": VALUES,
            },
        )
        post.append(mono() - t)
        if answer.status_code != 303:
            raise RuntimeError(f"POST /deploy: {answer.status_code} {answer.text[-600:]}")
        if not secret_seen(api, ns, name, mono() + 30):
            raise RuntimeError(f"{ns}/{name}: no release Secret 30 s after the deploy")
        total.append(mono() - t)
        t = mono()
        helm.install(user, f"direct-{k}", CHART, ns, {}, version=CHART_VERSION, repo=repo_url)
        direct_repo.append(mono() - t)
        t = mono()
        # A chart file is no chart name Helm.install takes: the same arguments by hand.
        helm.run(
            ["install", "--namespace", ns, "--output", "json", "--", f"file-{k}", str(archive)],
            user,
        )
        direct_file.append(mono() - t)
        log(
            f"deploy {k}: form -> Secret {total[-1]:.2f} s; helm install here "
            f"{direct_repo[-1]:.2f} s (from the .tgz {direct_file[-1]:.2f} s)"
        )
    return {
        "form_get_ms": form_s * 1e3,
        "post_to_secret_ms": summary(total),
        "post_ms": summary(post),
        "helm_install_repo_ms": summary(direct_repo),
        "helm_install_file_ms": summary(direct_file),
        # The largest child this script waited for: one of those helm processes.
        "helm_max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "cpu_s": cpu.used(),
        "loadavg": os.getloadavg(),
    }


# --- /apps profiled in this process ----------------------------------------------------


def profile_apps(
    kubeconfig: Path, server: ApiServer, helm_binary: Path, repo_url: str, token: str, tmp: Path
) -> dict[str, Any]:
    """One GET /apps under cProfile, on a dashboard app built here as `nftproxy dashboard`
    builds it. Starlette's thread pool is replaced by direct calls (in this process only),
    so that the request runs on the profiled thread; the access reviews still run in their
    own pool, and their time shows as the wait for it."""
    from nftproxy.dashboard import app as dashboard_app
    from nftproxy.dashboard.catalog import RepoConfig
    from nftproxy.kube.client import Client, load_kubeconfig

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    dashboard_app.run_in_threadpool = inline
    lister = Client(load_kubeconfig(str(kubeconfig)), timeout=10)

    def namespaces() -> list[str]:
        found = json.loads(lister.get("/api/v1/namespaces"))
        return [str(item["metadata"]["name"]) for item in found.get("items", [])]

    homes = tmp / "profile-homes"
    config = dashboard_app.DashboardConfig(
        server=server,
        helm=helm_binary,
        homes=homes,
        namespaces=namespaces,
        repos=(RepoConfig(REPO_NAME, repo_url),),
    )
    app = dashboard_app.create_app(config)

    async def run() -> tuple[float, float, str]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://dashboard") as c:
            form = await c.get("/signin")
            signed = await c.post("/signin", data={"csrf": csrf_of(form.text), "token": token})
            if signed.status_code != 303:
                raise RuntimeError(f"profile sign-in: {signed.status_code}")
            t = mono()
            await c.get("/apps")  # warm: helm home, imports, templates
            warm = mono() - t
            profiler = cProfile.Profile()
            t = mono()
            profiler.enable()
            answer = await c.get("/apps")
            profiler.disable()
            wall = mono() - t
            if answer.status_code != 200:
                raise RuntimeError(f"profiled /apps: {answer.status_code}")
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(15)
            buckets = cumulative_by_function(stats)
            return warm, wall, text.getvalue() + "\n" + json.dumps(buckets)

    warm, wall, text = asyncio.run(run())
    report, _, buckets = text.rpartition("\n")
    (tmp / "profile.txt").write_text(report)
    return {
        "warm_ms": warm * 1e3,
        "profiled_ms": wall * 1e3,
        "cumulative_s": json.loads(buckets),
        "pstats": report,
    }


# (file ending, function) -> what it is, for the profile's summary
PROFILE_BUCKETS = {
    ("nftproxy/dashboard/app.py", "apps"): "the /apps handler",
    ("nftproxy/dashboard/releases.py", "current"): "reading releases (lists with the user's token)",
    (
        "nftproxy/dashboard/releases.py",
        "_summaries_of",
    ): "of which decoding releases not seen before",
    ("nftproxy/dashboard/app.py", "deployable"): "access reviews (where the user may deploy)",
    ("bench/dashboard.py", "namespaces"): "the dashboard's namespace LIST",
    ("nftproxy/dashboard/app.py", "page"): "rendering the page",
}


def cumulative_by_function(stats: pstats.Stats) -> dict[str, Any]:
    out: dict[str, Any] = {label: {"calls": 0, "s": 0.0} for label in PROFILE_BUCKETS.values()}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats' own table
    for (path, _line, func), (calls, _prim, _tt, ct, _callers) in raw.items():
        for (ending, name), label in PROFILE_BUCKETS.items():
            if func == name and path.endswith(ending):
                out[label]["calls"] += calls
                out[label]["s"] = round(out[label]["s"] + ct, 3)
    return out


# --- one run ---------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    helm_binary = Path(args.helm) if args.helm else find_helm()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nftproxy-dashbench-")))
        stack.callback(stop_all)
        t = mono()
        cp = kube.start_control_plane(tmp / "cp")
        stack.callback(cp.stop)
        res["control_plane_start_s"] = mono() - t
        api = Api(cp)
        procs = {"kube-apiserver": cp._apiserver.proc, "etcd": cp._etcd.proc}
        pids = {name: proc.pid for name, proc in procs.items() if proc is not None}
        server = ApiServer(cp.url, insecure=True)

        namespaces = [namespace_name(k) for k in range(args.namespaces)]
        t = mono()
        parallel(
            lambda k: ok(api, "POST", "/api/v1/namespaces", {"metadata": {"name": namespaces[k]}}),
            len(namespaces),
        )
        token = make_user(api, namespaces)
        user = Credentials(token)
        res["namespaces_user_s"] = mono() - t
        log(
            f"control plane up; {len(namespaces)} namespaces and the user in "
            f"{res['namespaces_user_s']:.1f}s"
        )

        # The chart repository: bench-app 1.0.0 packaged by helm, an index of K versions.
        helm = Helm(helm_binary, server, tmp / "bench-helm")
        src, served = tmp / "charts", tmp / "repo"
        repo = stack.enter_context(HttpChartRepo(helm, served))
        chart_dir = write_chart(src, CHART, CHART_VERSION, values=VALUES, templates=TEMPLATES)
        helm.run(["package", str(chart_dir), "--destination", str(served)])
        archive = served / f"{CHART}-{CHART_VERSION}.tgz"
        res["index"] = write_index(served, repo.url, args.versions, archive.read_bytes())
        log(
            f"index.yaml: {res['index']['versions']} versions of {res['index']['charts']} "
            f"charts, {res['index']['index_bytes']:,} bytes"
        )

        real = min(REAL_INSTALLS, args.releases)
        res["real_installs"] = install_real(helm, user, namespaces, real, repo.url, log)
        res["storage"] = replicate(api, namespaces, args.releases, real, log)
        res["storage"]["total_secrets"] = res["storage"]["secrets"] + real + HISTORY - 1
        counts = expected_releases(args.releases, args.namespaces)
        listed = helm.releases(user, namespaces[0])
        if len(listed) != counts[0]:
            raise RuntimeError(
                f"helm lists {len(listed)} releases in {namespaces[0]}, not {counts[0]}"
            )

        kubeconfig = cp.kubeconfig(tmp / "kubeconfig", cp.admin_token)
        port = kube.free_ports(1)[0]
        t = mono()
        dashboard, log_path = start_dashboard(kubeconfig, repo.url, helm_binary, port, tmp)
        pids["dashboard"] = dashboard.pid
        client = stack.enter_context(
            httpx2.Client(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=REQUEST_TIMEOUT
            )
        )
        wait_ready(client, dashboard, log_path)
        res["dashboard_start_s"] = mono() - t
        res["rss_mb"] = {"started": proc_mem_mb(dashboard.pid)}
        sign_in(client, token)
        log(f"dashboard up in {res['dashboard_start_s']:.1f}s, signed in")

        res["catalog"] = catalog_phase(
            client, args.rounds, args.phase_seconds, res["index"]["charts"], pids, log
        )
        res["rss_mb"]["after_catalog"] = proc_mem_mb(dashboard.pid)
        res["apps"] = apps_phase(client, args.rounds, args.phase_seconds, args.releases, pids, log)
        res["apps"]["helm_alone"] = alone = helm_alone(helm, user, namespaces[0], 5)
        log(
            f"helm run here: version p50 {alone['version_ms']['p50']:.0f} ms, list of "
            f"{counts[0]} releases p50 {alone['list_ms']['p50']:.0f} ms"
        )
        res["rss_mb"]["after_apps"] = proc_mem_mb(dashboard.pid)
        res["deploy"] = deploy_phase(
            client, api, helm, user, namespaces, repo.url, archive, args.deploys, pids, log
        )
        res["rss_mb"]["after_deploy"] = proc_mem_mb(dashboard.pid)
        res["dashboard_cpu_s"] = proc_cpu_s(dashboard.pid)
        res["other_rss_mb"] = {
            k: proc_mem_mb(p).get("VmRSS") for k, p in pids.items() if k != "dashboard"
        }
        mem = res["rss_mb"]["after_deploy"]
        log(f"dashboard VmRSS {mem.get('VmRSS', 0):.0f} MB, VmHWM {mem.get('VmHWM', 0):.0f} MB")

        p95 = res["apps"]["ms"]["p95"]
        if args.profile == "always" or (args.profile == "auto" and p95 > GOALS["apps_p95_ms"]):
            log("profiling one GET /apps in this process (cProfile)")
            res["apps_profile"] = profile_apps(
                kubeconfig, server, helm_binary, repo.url, token, tmp
            )
            log(
                f"profiled /apps: {res['apps_profile']['profiled_ms']:.0f} ms; "
                f"{res['apps_profile']['cumulative_s']}"
            )

        stop_processes([dashboard], grace=10)
        _procs.remove(dashboard)
        res["dashboard_exit"] = dashboard.returncode
        # What the stopped dashboard left in its TMPDIR (its users' helm homes go there).
        left = tmp / "dashboard-tmp"
        res["dashboard_left_in_tmpdir"] = {
            "entries": sorted(p.name for p in left.iterdir()),
            "bytes": sum(p.stat().st_size for p in left.rglob("*") if p.is_file()),
        }
        text = log_path.read_text(errors="replace")
        res["dashboard_log_warnings"] = [
            ln for ln in text.splitlines() if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln
        ][:10]
    res["loadavg_after"] = os.getloadavg()
    return res


# --- output ----------------------------------------------------------------------------


def f(x: Any, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def figures(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, goal, measured) rows."""
    r = report["result"]
    a = report["args"]
    rows = []
    if "apps" in r:
        ms = r["apps"]["ms"]
        rows.append(
            (
                f"GET /apps: {a['releases']:,} releases in {a['namespaces']} namespaces, "
                "all visible",
                f"p95 <= {GOALS['apps_p95_ms']:g} ms",
                f"p50 {f(ms['p50'])} ms, p95 {f(ms['p95'])} ms ({ms['count']} requests; "
                f"first {f(r['apps']['first_ms'])} ms)",
            )
        )
    if "catalog" in r:
        ms = r["catalog"]["ms"]
        rows.append(
            (
                f"GET /catalog?q=...: {a['versions']:,} versions of {r['index']['charts']} charts",
                f"p95 <= {GOALS['catalog_p95_ms']:g} ms",
                f"p50 {f(ms['p50'], 1)} ms, p95 {f(ms['p95'], 1)} ms ({ms['count']} requests "
                f"over {len(QUERIES)} queries; "
                f"the first, which fetches the index: {f(r['catalog']['first_ms'])} ms)",
            )
        )
    if "deploy" in r:
        d = r["deploy"]
        total, helm_ms = d["post_to_secret_ms"], d["helm_install_repo_ms"]
        rows.append(
            (
                "POST /deploy -> release Secret in the API",
                f"<= {GOALS['deploy_s']:g} s",
                f"p50 {f(total['p50'] / 1e3, 2)} s, max {f(total['max'] / 1e3, 2)} s "
                f"({total['count']} deploys); "
                f"the same helm install alone: p50 {f(helm_ms['p50'] / 1e3, 2)} s "
                f"(from the .tgz on disk {f(d['helm_install_file_ms']['p50'] / 1e3, 2)} s)",
            )
        )
    if "rss_mb" in r and "after_deploy" in r["rss_mb"]:
        mem = r["rss_mb"]["after_deploy"]
        rows.append(
            (
                "dashboard process memory after the runs",
                f"<= {GOALS['rss_mb']:g} MB",
                f"VmRSS {f(mem.get('VmRSS'))} MB, VmHWM {f(mem.get('VmHWM'))} MB",
            )
        )
    return rows


def text_table(report: dict[str, Any]) -> str:
    rows = [("what", "goal", "measured"), *figures(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in rows]
    lines.insert(1, "-" * (sum(widths) + 4 + max(len(row[2]) for row in rows)))
    r = report["result"]
    if "error" in r:
        lines.append(f"failed: {r['error']}")
    prof = r.get("apps_profile")
    if prof:
        lines.append(f"/apps profiled in-process ({f(prof['profiled_ms'])} ms under cProfile):")
        for label, got in prof["cumulative_s"].items():
            lines.append(f"  {label}: {got['s']:.2f} s in {got['calls']} calls")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    m, a, r = report["machine"], report["args"], report["result"]
    lines = [
        MARK_BEGIN,
        "### Measured (`bench/dashboard.py`)",
        "",
        f"Run {report['date']}: `{report['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, kube-apiserver/etcd "
        f"{m['kubernetes']} and helm {m['helm']} on the same machine; nftproxy at "
        f"{m['source_commit']} (dashboard last changed in {m.get('dashboard_commit', '?')})"
        f"{' (with uncommitted changes in src/)' if m['source_modified'] else ''}; "
        f"load average {f(r.get('loadavg_before', [0])[0], 1)} before the run.  ",
        f"Workload: {a['releases']:,} releases ({r.get('storage', {}).get('total_secrets', 0):,} "
        f"storage Secrets: every {HISTORY_EVERY}th release has {HISTORY} revisions) in "
        f"{a['namespaces']} namespaces; a chart index of {a['versions']:,} versions; "
        f"{a['rounds']} rounds each, {a['deploys']} deploys.",
        "",
        "| what | goal | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {w} | {g} | {v} |" for w, g, v in figures(report)]
    if "error" in r:
        lines += ["", f"The run failed: {r['error'][:300]}"]
    cat = r.get("catalog")
    if cat:
        per = ", ".join(
            f"`{q or '(empty)'}` {cat['matches'][q]} charts: {f(s['p50'], 1)} / {f(s['p95'], 1)}"
            for q, s in cat["by_query"].items()
        )
        lines += ["", f"Catalog by query (matches: p50 / p95 ms): {per}."]
    apps, dep = r.get("apps"), r.get("deploy")
    if apps:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in apps["cpu_s"].items())
        lines += [
            "",
            f"CPU seconds during the {apps['ms']['count']} /apps requests "
            f"({f(apps['wall_s'], 1)} s of wall time): {cpu}.",
        ]
        alone = apps.get("helm_alone")
        if alone:
            lines += [
                "",
                f"One helm process run by this script as the user: `helm version` p50 "
                f"{f(alone['version_ms']['p50'])} ms, `helm list` of `{alone['namespace']}` "
                "(what /apps ran for each namespace until it read release Secrets itself) "
                f"p50 {f(alone['list_ms']['p50'])} ms.",
            ]
    if dep:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in dep["cpu_s"].items())
        lines += [
            "",
            f"Deploy: the form page (GET /deploy) took {f(dep['form_get_ms'])} ms; the POST "
            f"itself p50 {f(dep['post_ms']['p50'])} ms. CPU seconds over the deploy rounds "
            f"(each: one form submit, two helm installs run by this script): {cpu}. The largest "
            f"helm process: {f(dep['helm_max_rss_mb'])} MB.",
        ]
    prof = r.get("apps_profile")
    if prof:
        parts = ", ".join(
            f"{k} {v['s']:.2f} s ({v['calls']} calls)" for k, v in prof["cumulative_s"].items()
        )
        lines += [
            "",
            f"One /apps profiled in-process (cProfile, {f(prof['profiled_ms'])} ms): {parts}.",
        ]
    rss = r.get("rss_mb", {})
    if rss:
        steps = ", ".join(f"{k} {f(v.get('VmRSS'))} ({f(v.get('VmHWM'))})" for k, v in rss.items())
        lines += ["", f"Dashboard VmRSS (VmHWM) MB: {steps}."]
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def git_last_change(path: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", path],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--releases", type=int, default=1000, help="Helm releases (default 1000)")
    p.add_argument("--namespaces", type=int, default=100, help="namespaces they are spread over")
    p.add_argument("--versions", type=int, default=5000, help="chart versions in the index")
    p.add_argument("--rounds", type=int, default=20, help="requests per measurement")
    p.add_argument("--deploys", type=int, default=5, help="deploys through the form")
    p.add_argument(
        "--phase-seconds", type=float, default=300.0, help="stop a measurement's rounds after this"
    )
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile one /apps in-process (auto: when over its goal)",
    )
    p.add_argument("--helm", help="the helm binary (default: hack/dashboard/build.sh's)")
    p.add_argument("--json", action="store_true", help="print the JSON report, not the table")
    p.add_argument("--out", help="JSON output (default bench/results/dashboard-<date>.json)")
    p.add_argument(
        "--markdown",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown file whose dashboard section is replaced ('' to skip)",
    )
    p.add_argument("--render", metavar="JSON", help="only rewrite --markdown from a saved run")
    args = p.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        write_markdown(Path(args.markdown), markdown(report), MARK_BEGIN, MARK_END)
        return 0
    if min(args.releases, args.namespaces, args.versions, args.rounds, args.deploys) < 1:
        p.error("--releases, --namespaces, --versions, --rounds and --deploys must be >= 1")
    try:
        kube.find_binaries()
        helm_binary = Path(args.helm) if args.helm else find_helm()
    except (kube.BinariesMissing, HelmMissing) as exc:
        print(f"bench/dashboard.py: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    start = mono()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"dashboard-{stamp}.json"
    helm_version = subprocess.run(
        [str(helm_binary), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(
            kubernetes=kube.kubernetes_version(),
            helm=helm_version or "?",
            # The last commit that changed the dashboard: the code these figures are for.
            dashboard_commit=git_last_change("src/nftproxy/dashboard"),
        ),
        "args": vars(args),
        "goals": GOALS,
        "result": {},
        "results": [],
    }

    def log(msg: str) -> None:
        print(f"[{mono() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    code = 0
    try:
        report["result"] = run(args, log)
    except (RuntimeError, OSError, HelmError, kube.ControlPlaneError, httpx2.HTTPError) as exc:
        log(f"failed: {exc}")
        report["result"] = {"error": str(exc)}
        code = 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); cleaned up")
        report["result"] = {"error": f"interrupted: {exc or 'Ctrl-C'}"}
        code = 130
    finally:
        stop_all()
        report["wall_s"] = mono() - start
        report["results"] = [report["result"]] if "error" not in report["result"] else []
        save_report(report, out, args.markdown, markdown, (MARK_BEGIN, MARK_END), log)
    print(json.dumps(report, indent=1, default=str) if args.json else text_table(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
