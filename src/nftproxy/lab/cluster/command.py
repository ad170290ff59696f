"""`nftproxy cluster up|down|status|kubeconfig|exec|e2e`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from nftproxy.lab.cluster.cluster import Cluster, ClusterError, default_dir
from nftproxy.lab.cluster.config import PROXIES, ConfigError, Spec
from nftproxy.lab.cluster.images import ImageError
from nftproxy.lab.cluster.pki import PKIError

__all__ = [
    "DEFAULT_NAME",
    "add_parser",
    "cmd_cluster",
]

DEFAULT_NAME = "nftproxy"


def _spec(args: argparse.Namespace) -> Spec:
    directory = Path(args.dir).absolute() if args.dir else default_dir(args.name)
    nodes, proxy = getattr(args, "nodes", 2), getattr(args, "proxy", None)
    state = directory / "state.json"
    if args.cluster_command != "up" and state.exists():
        saved = json.loads(state.read_text())
        nodes, proxy = saved.get("nodes", nodes), saved.get("proxy", proxy)
    return Spec(name=args.name, dir=directory, nodes=nodes, proxy=proxy or "nftproxy")


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ClusterError(f"cluster {what} needs root (network namespaces, mounts, cgroups)")


def cmd_cluster(args: argparse.Namespace) -> int:
    try:
        spec = _spec(args)
        cluster = Cluster(spec)
        verb = args.cluster_command
        if verb in ("up", "down", "e2e", "exec"):
            _need_root(verb)
        which = "" if spec.name == DEFAULT_NAME else f" --name {spec.name}"
        if args.dir:
            which += f" --dir {spec.dir}"
        if verb in ("kubeconfig", "exec", "e2e") and not (spec.dir / "state.json").exists():
            raise ClusterError(f"cluster {spec.name} is not up ({spec.dir} holds no cluster)")
        if verb == "up":
            cluster.up()
            print(f"cluster {spec.name} is up: {spec.nodes} nodes, proxy {spec.proxy}")
            print(f"  nftproxy cluster exec{which} -- kubectl get pods -A")
            return 0
        if verb == "down":
            existed = spec.dir.exists()
            left = cluster.down(force=args.force)
            for what in left:
                print(f"nftproxy cluster down: could not remove {what}", file=sys.stderr)
            if not left:
                print(
                    f"cluster {spec.name}: removed (processes, mounts, cgroups, namespaces "
                    f"and {spec.dir}, its logs too)"
                    if existed
                    else f"cluster {spec.name}: nothing to remove"
                )
            return 1 if left else 0
        if verb == "status":
            if not (spec.dir / "state.json").exists():
                print(f"cluster {spec.name}: not up ({spec.dir} holds no cluster)")
                return 3
            status = cluster.status()
            for name, alive in status["processes"].items():  # type: ignore[attr-defined]
                print(f"{name:28} {'running' if alive else 'STOPPED'}")
            if status["nodes"]:
                print(status["nodes"], end="")
            return 0 if all(status["processes"].values()) else 1  # type: ignore[attr-defined]
        if verb == "kubeconfig":
            print(cluster.kubeconfig_path())
            return 0
        if verb == "exec":
            return cluster.exec(args.argv)
        if verb == "e2e":
            from nftproxy.lab.cluster import e2e

            return e2e.main(cluster, args)
    except (ClusterError, ConfigError, ImageError, PKIError, OSError) as exc:
        print(f"nftproxy cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"nftproxy cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.cluster_command)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "cluster",
        help="a real Kubernetes cluster on this machine, nftproxy as its proxy (root)",
        description="Kubernetes built from source (hack/cluster/build.sh), one control plane and "
        "N nodes, each in network namespaces of its own: nothing of the machine is changed "
        "and nothing listens outside them.",
    )
    verbs = p.add_subparsers(dest="cluster_command", required=True, metavar="VERB")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--name", default=DEFAULT_NAME, help=f"cluster name (default {DEFAULT_NAME})"
        )
        q.add_argument("--dir", help="state directory (default /var/lib/nftproxy-cluster/NAME)")
        q.set_defaults(func=cmd_cluster)

    q = verbs.add_parser("up", help="build the namespaces, start the control plane and nodes")
    common(q)
    q.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2), 1 to 9")
    q.add_argument(
        "--proxy",
        choices=PROXIES,
        default="nftproxy",
        help="service proxy on every node (default nftproxy)",
    )
    q = verbs.add_parser("down", help="stop and remove everything `up` made, even after a crash")
    common(q)
    q.add_argument(
        "--nodes", type=int, default=2, help="with --force: how many nodes it had (default 2)"
    )
    q.add_argument(
        "--force",
        action="store_true",
        help="the state directory is gone: remove the namespaces, processes and cgroups of "
        "the cluster's names anyway",
    )
    q = verbs.add_parser("status", help="which parts run, and the nodes")
    common(q)
    q = verbs.add_parser(
        "kubeconfig",
        help="print the admin kubeconfig's path; the API answers only inside the cluster's "
        "namespaces: use it with `cluster exec` (or ip netns exec NAME-cp)",
    )
    common(q)
    q = verbs.add_parser(
        "exec",
        help="run a command where the cluster is reachable (KUBECONFIG set, kubectl on PATH)",
    )
    common(q)
    q.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")
    q = verbs.add_parser("e2e", help="run Kubernetes' e2e network specs against the cluster")
    common(q)
    from nftproxy.lab.cluster import e2e

    e2e.add_arguments(q)
