"""`nftproxy dashboard-demo`: the app dashboard on this machine in one command, to click
through: a real kube-apiserver and etcd, a chart repository on loopback with example charts
(one with a values schema, in two versions), two users with their own rights, an app
already deployed, and the dashboard. Everything it starts is stopped, and its files
removed, when it ends (Ctrl-C).

Nothing runs pods here (no kubelet, no controllers): Deployments stay 0/N ready and
Services have no endpoints, and the pages say so. `nftproxy cluster up` is the real
cluster."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from nftproxy.lab.apiserver import BinariesMissing, ControlPlane, start_control_plane
from nftproxy.lab.charts import WEB_APP, HttpChartRepo, write_chart
from nftproxy.lab.users import EVERYTHING, VIEW, grant, namespace, user

__all__ = ["add_parser", "cmd_dashboard_demo", "demo_charts"]

WEB_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["replicas", "message"],
    "properties": {
        "replicas": {
            "type": "integer",
            "title": "Replicas",
            "description": "How many copies of the app run",
            "minimum": 1,
            "maximum": 10,
        },
        "message": {
            "type": "string",
            "title": "Greeting",
            "description": "What the app answers",
            "minLength": 1,
            "maxLength": 200,
        },
        "service": {
            "type": "object",
            "properties": {
                "type": {"title": "Service type", "enum": ["ClusterIP", "NodePort"]},
                "port": {
                    "type": "integer",
                    "title": "Service port",
                    "minimum": 1,
                    "maximum": 65535,
                },
            },
        },
    },
}
WEB_VALUES = """\
replicas: 2
message: Hello from the demo
service:
  type: ClusterIP
  port: 80
"""
WEB_TEMPLATES = {
    **WEB_APP,
    "NOTES.txt": "{{ .Release.Name }} answers on port {{ .Values.service.port }} of its Service.\n",
}


NOTES_CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}
data:
  text: {{ .Values.text | quote }}
"""


WEB_DESCRIPTION = "A small web server (agnhost netexec) behind a Service"
WEB_README = """\
# webapp

A small web server: [agnhost](https://github.com/kubernetes/kubernetes/tree/master/test/images/agnhost)
`netexec`, which answers `/hostname` with its pod's name, behind a Service.

| value | what |
|---|---|
| `replicas` | how many copies run (1-10) |
| `message` | a greeting in their environment |
| `service.type` | `ClusterIP` or `NodePort` |
| `service.port` | the Service's port |

Version 1.1.0 adds a ConfigMap with the greeting.
"""


def demo_charts(root: Path) -> list[Path]:
    """The demo repository's charts: `webapp` (a values schema; 1.0.0 and 1.1.0) and
    `notes` (no schema: values as YAML only)."""
    newer = dict(WEB_TEMPLATES)
    newer["configmap.yaml"] = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  message: {{ .Values.message | quote }}\n"
    )
    charts = [
        write_chart(
            root / "a",
            "webapp",
            "1.0.0",
            values=WEB_VALUES,
            templates=WEB_TEMPLATES,
            schema=json.dumps(WEB_SCHEMA),
            app_version="2.63.0",
            description=WEB_DESCRIPTION,
            readme=WEB_README,
        ),
        write_chart(
            root / "b",
            "webapp",
            "1.1.0",
            values=WEB_VALUES,
            templates=newer,
            schema=json.dumps(WEB_SCHEMA),
            app_version="2.63.0",
            description=WEB_DESCRIPTION,
            readme=WEB_README,
        ),
        write_chart(
            root / "c",
            "notes",
            "0.1.0",
            values="text: hello\n",
            templates={"cm.yaml": NOTES_CONFIGMAP},
            description="A note kept in a ConfigMap: a chart without a values schema",
            readme="# notes\n\nKeeps `text` in a ConfigMap. It has no values schema: its values "
            "are edited as YAML.\n",
        ),
    ]
    return charts


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard-demo",
        help="the app dashboard with a local API server, chart repository and users, to try",
    )
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument(
        "--token-dir",
        help="also write the users' tokens into this directory (alice.token, bob.token)",
    )
    p.set_defaults(func=cmd_dashboard_demo)


@contextmanager
def _until_stopped() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM (the handlers put back afterwards)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_dashboard_demo(args: argparse.Namespace) -> int:
    from nftproxy.config import BindAddressError, split_host_port
    from nftproxy.dashboard.helm import ApiServer, Helm, HelmMissing, find_helm

    try:
        import uvicorn

        from nftproxy.dashboard.app import DashboardConfig, create_app
        from nftproxy.dashboard.catalog import RepoConfig
    except ImportError as exc:
        print(
            f"dashboard-demo: {exc.name} is missing: pip install 'nftproxy[dashboard]'",
            file=sys.stderr,
        )
        return 1
    try:
        host, port = split_host_port("--listen", args.listen)
        helm_binary = find_helm()
    except (BindAddressError, HelmMissing) as exc:
        print(f"dashboard-demo: {exc}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="nftproxy-dashboard-demo-"))
    try:
        with _until_stopped() as stop:
            try:
                cp = start_control_plane(work / "cp")
            except BinariesMissing as exc:
                print(f"dashboard-demo: {exc}", file=sys.stderr)
                return 1
            with cp:
                server = ApiServer(cp.url, insecure=True)
                packager = Helm(helm_binary, server, work / "homes")
                with HttpChartRepo(packager, work / "repo") as repo:
                    repo.publish(demo_charts(work / "charts"))
                    tokens = _people(cp, packager, repo.url)
                    config = DashboardConfig(
                        server=server,
                        helm=helm_binary,
                        homes=work / "homes",
                        namespaces=lambda: ["team-a", "team-b"],
                        repos=(RepoConfig("demo", repo.url),),
                        nodes=lambda: _nodes(cp),
                    )
                    web = uvicorn.Server(
                        uvicorn.Config(
                            create_app(config), host=host, port=port, log_level="warning"
                        )
                    )
                    thread = threading.Thread(target=web.run, name="dashboard", daemon=True)
                    thread.start()
                    started = time.monotonic() + 30
                    while not web.started and thread.is_alive() and time.monotonic() < started:
                        time.sleep(0.05)
                    _announce(args, tokens)
                    while not stop.wait(0.5) and thread.is_alive():
                        pass
                    web.should_exit = True
                    thread.join(timeout=15)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("dashboard-demo: stopped; its API server, repository and files are gone", file=sys.stderr)
    return 0


def _nodes(cp: ControlPlane) -> list[dict[str, Any]]:
    status, found = cp.request("GET", "/api/v1/nodes")
    return list(found.get("items") or []) if status == 200 else []


def _people(cp: ControlPlane, helm: Any, repo_url: str) -> dict[str, str]:
    """alice deploys in team-a and may look at team-b; bob only looks at team-a. An app
    that alice deployed with the helm CLI is already there."""
    from nftproxy.dashboard.helm import Credentials

    namespace(cp, "team-a")
    namespace(cp, "team-b")
    alice = user(cp, "team-a", "alice", EVERYTHING, hours=24)
    grant(cp, "team-b", ("team-a", "alice"), "alice-views", VIEW)
    namespace(cp, "people")
    bob = user(cp, "people", "bob", [], hours=24)
    grant(cp, "team-a", ("people", "bob"), "bob-views", VIEW)
    values = {"replicas": 1, "message": "deployed with the helm CLI"}
    helm.install(
        Credentials(alice.token),
        "hello",
        "webapp",
        "team-a",
        values,
        version="1.0.0",
        repo=repo_url,
    )
    return {"alice": alice.token, "bob": bob.token}


def _announce(args: argparse.Namespace, tokens: dict[str, str]) -> None:
    """Say where and with what to sign in; the token files come last, so that whoever
    waits for them finds the dashboard serving and these lines printed."""
    print(
        f"\nThe app dashboard: http://{args.listen}/\n\n"
        "Sign in with a token (valid 24 hours):\n"
        f"  alice deploys in team-a and may look at team-b:\n    {tokens['alice']}\n\n"
        f"  bob may only look at team-a:\n    {tokens['bob']}\n\n"
        "No pods run in this demo (no kubelet): apps stay 0/N ready. Ctrl-C ends it.\n",
        flush=True,
    )
    if args.token_dir:
        where = Path(args.token_dir)
        where.mkdir(parents=True, exist_ok=True)
        for name, token in tokens.items():
            (where / f"{name}.token").write_text(token + "\n")
            (where / f"{name}.token").chmod(0o600)
