"""`nftproxy dashboard`: serve the app dashboard. The dashboard's own identity (a kubeconfig
or its in-cluster service account) only lists namespaces, nodes and Services; users act
with their own tokens."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rest is imported when the command runs: other commands start faster
    from nftproxy.dashboard.catalog import RepoConfig
    from nftproxy.kube.client import ClusterConfig

__all__ = ["add_parser", "cmd_dashboard", "repo_option"]


def repo_option(text: str) -> RepoConfig:
    """NAME=http(s)://URL (a classic repository) or NAME=oci://HOST[:PORT]/PATH[#CHART,...]
    (an OCI registry; oci+http:// for plain HTTP)."""
    from nftproxy.dashboard.catalog import CatalogError, RepoConfig, oci_location

    name, sep, url = (part.strip() for part in text.partition("="))
    if not sep or not name or not url.startswith(("http://", "https://", "oci://", "oci+http://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=http(s)://URL or NAME=oci://HOST[:PORT]/PATH"
        )
    try:
        oci_location(url)
    except CatalogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return RepoConfig(name, url)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the app dashboard: Helm charts deployed by users with their own rights",
    )
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--kubeconfig", help="the dashboard's own identity (default: in-cluster)")
    p.add_argument(
        "--repo",
        action="append",
        type=repo_option,
        default=[],
        metavar="NAME=URL",
        help="a chart repository, repeatable: http(s)://URL (its index.yaml), or an OCI "
        "registry, oci://HOST[:PORT]/PATH (HTTPS; oci+http:// for plain HTTP) whose charts "
        "are the repositories under PATH that its catalog lists; a registry that lists no "
        "catalog (most public ones) needs the charts named: oci://HOST/PATH#CHART,CHART",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="offer this namespace (repeatable) instead of listing them all",
    )
    p.add_argument(
        "--token-header",
        help="take the user's token from this request header, set by an authenticating "
        "proxy; only safe when the dashboard is reachable through that proxy alone",
    )
    p.add_argument("--helm", help="the helm binary (default: hack/dashboard/build.sh's)")
    p.add_argument(
        "--proxy-health",
        default="http://{address}:10256/healthz",
        metavar="URL",
        help="each node's proxy health endpoint, {address} the node's first InternalIP and "
        "{node} its name (default http://{address}:10256/healthz): the network panel says "
        "from it whether a node has synced a Service's last change",
    )
    p.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="the pod network as the proxies are told it (repeatable; default: the nodes' "
        "podCIDRs): decides which traffic the network panel shows masqueraded",
    )
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="cookies only over TLS: set when a proxy ends TLS in front (default with "
        "--tls-cert or --token-header)",
    )
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (cookies then TLS-only)")
    p.add_argument("--tls-key", help="... and this key")
    p.set_defaults(func=cmd_dashboard)


def _own_identity(kubeconfig: str | None) -> ClusterConfig:
    from nftproxy.kube import client

    if kubeconfig or os.environ.get("KUBECONFIG"):
        return client.load_kubeconfig(kubeconfig)
    return client.in_cluster()


def cmd_dashboard(args: argparse.Namespace) -> int:
    from nftproxy.config import BindAddressError, split_host_port
    from nftproxy.dashboard.catalog import CatalogError
    from nftproxy.dashboard.helm import ApiServer, HelmMissing, find_helm
    from nftproxy.kube.client import ApiError, Client, KubeConfigError

    try:
        import uvicorn

        from nftproxy.dashboard.app import DashboardConfig, create_app
    except ImportError as exc:
        print(
            f"nftproxy dashboard: {exc.name} is missing: pip install 'nftproxy[dashboard]'",
            file=sys.stderr,
        )
        return 1
    try:
        host, port = split_host_port("--listen", args.listen)
        own = _own_identity(args.kubeconfig)
        helm = Path(args.helm) if args.helm else find_helm()
    except (BindAddressError, KubeConfigError, HelmMissing, CatalogError) as exc:
        print(f"nftproxy dashboard: {exc}", file=sys.stderr)
        return 1
    if bool(args.tls_cert) != bool(args.tls_key):
        print("nftproxy dashboard: --tls-cert and --tls-key go together", file=sys.stderr)
        return 1
    server = ApiServer(
        own.server, Path(own.ca_file) if own.ca_file else None, insecure=own.insecure
    )
    lister = Client(own, timeout=10)
    fixed = sorted(set(args.namespace))

    def namespaces() -> list[str]:
        if fixed:
            return fixed
        found = json.loads(lister.get("/api/v1/namespaces"))
        return [str(item["metadata"]["name"]) for item in found.get("items") or []]

    def listed(path: str) -> list[dict[str, Any]]:
        found = json.loads(lister.get(path))
        return [item for item in found.get("items") or [] if isinstance(item, dict)]

    try:
        namespaces()  # the dashboard's own rights, checked once at start
    except ApiError as exc:
        print(
            f"nftproxy dashboard: cannot list namespaces ({exc}); give --namespace", file=sys.stderr
        )
        return 1
    if args.token_header and host not in ("127.0.0.1", "::1"):
        print(
            f"nftproxy dashboard: warning: --token-header {args.token_header} trusts that "
            f"header from anyone who can reach {args.listen}: only a proxy should",
            file=sys.stderr,
        )
    homes = Path(tempfile.mkdtemp(prefix="nftproxy-dashboard-"))
    config = DashboardConfig(
        server=server,
        helm=helm,
        homes=homes,
        namespaces=namespaces,
        repos=tuple(args.repo),
        token_header=args.token_header,
        secure_cookies=bool(args.tls_cert or args.secure_cookies or args.token_header),
        nodes=lambda: listed("/api/v1/nodes"),
        services=lambda: listed("/api/v1/services"),
        proxy_health=args.proxy_health,
        cluster_cidrs=tuple(args.cluster_cidr),
    )
    print(
        f"nftproxy dashboard on {'https' if args.tls_cert else 'http'}://{args.listen}/",
        file=sys.stderr,
    )
    # uvicorn stops on SIGTERM, then raises it again with the handler found before it: a
    # default one would end the process before the helm homes below are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            create_app(config),
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
        )
    finally:
        shutil.rmtree(homes, ignore_errors=True)  # users' helm homes go with the sessions
    return 0
