"""Bring the local cluster up and down: processes, namespaces, mounts and cgroups.

Each part runs where the cluster's own namespaces put it:

- the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and the
  clients (kubectl, the e2e suite) in the network namespace `<name>-cp`, which also holds
  the bridge every node hangs off;
- each node in its own network namespace `<name>-nodeN`, with a private mount and UTS
  namespace held open by a `sleep` process: its containerd, kubelet and service proxy enter
  it, so the kubelet's mounts, its sysctl writes (onto files bind-mounted over /proc/sys)
  and the runtime's state never reach the VM.

`down` finds what to stop by membership, not by memory: every process inside one of the
cluster's network namespaces, node mount namespaces or cgroups was started for the cluster.
So it works after a crashed `up`, and it never touches a process outside them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from nftproxy.lab.cluster import images, pki
from nftproxy.lab.cluster.config import (
    API_SERVICE_IP,
    DNS_DOMAIN,
    KUBELET_SYSCTLS,
    NODE_NET,
    POD_NET,
    SERVICE_NET,
    Node,
    Spec,
    cni_config,
    containerd_config,
    coredns_manifests,
    kube_proxy_config,
    kubeconfig,
    kubelet_config,
    node_mounts,
    resolv_conf,
)

__all__ = [
    "CGROUP_FS",
    "CNI_PLUGINS",
    "NETNS_DIR",
    "REPO",
    "Cluster",
    "ClusterError",
    "bin_dir",
    "default_dir",
    "hierarchies",
    "repo_file",
]

log = logging.getLogger(__name__)

CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy"}
REPO = Path(__file__).resolve().parents[4]


class ClusterError(RuntimeError):
    pass


def repo_file(relative: str) -> Path:
    """A file of the source checkout (deploy/, hack/): the cluster is a tool of the checkout."""
    path = REPO / relative
    if not path.exists():
        raise ClusterError(f"{relative} not found under {REPO}: run from a source checkout")
    return path


def default_dir(name: str) -> Path:
    return Path(os.environ.get("NFTPROXY_CLUSTER_DIR", "/var/lib/nftproxy-cluster")) / name


def bin_dir() -> Path:
    cache = os.environ.get("NFTPROXY_CLUSTER_CACHE") or str(
        Path.home() / ".cache" / "nftproxy" / "cluster"
    )
    return Path(cache) / "bin"


def _run(argv: Sequence[str], *, what: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(
            f"{what}: {' '.join(argv)} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc.stdout


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _ns_inode(pid: int, kind: str) -> int | None:
    return _inode(f"/proc/{pid}/ns/{kind}")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def hierarchies(kinds: tuple[str, ...] = ("cgroup", "cgroup2")) -> list[Path]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup: the v1 ones the kubelet uses,
    and (by default) the cgroup2 one of a hybrid mount, where runc puts its pods too."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4]
            if fields[sep + 1] in kinds and (point + "/").startswith(str(CGROUP_FS) + "/"):
                found.append(Path(point))
    return sorted(found)


def _v1_hierarchies() -> list[Path]:
    return hierarchies(("cgroup",))


class Cluster:
    def __init__(self, spec: Spec, *, binaries: Path | None = None) -> None:
        self.spec = spec
        self.bin = binaries or bin_dir()
        self.dir = spec.dir
        self.logs = self.dir / "logs"
        self.pki = self.dir / "pki"
        # The processes this object started: they outlive `up` (new sessions), and are
        # reaped by `down` when the same object brings the cluster down.
        self._children: list[subprocess.Popen[bytes]] = []
        self._lock: IO[str] | None = None

    # ---- paths and small helpers -------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process of the cluster: the built binaries first on
        PATH, kubectl's cache in the cluster's directory (not ~/.kube), and no HTTP proxy
        (every address is inside the cluster)."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
        env["PATH"] = f"{self.bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        env["KUBECACHEDIR"] = str(self.dir / "kube-cache")
        return {**env, **extra}

    def kubeconfig_path(self, who: str = "admin") -> Path:
        return self.dir / "kubeconfig" / f"{who}.conf"

    def _binary(self, name: str) -> str:
        path = self.bin / name
        if not path.exists():
            raise ClusterError(f"{path} is missing: run hack/cluster/build.sh first")
        return str(path)

    def _holder_pid(self, node: Node) -> int:
        pid = int((self.spec.node_dir(node) / "holder.pid").read_text())
        netns = _inode(str(NETNS_DIR / node.netns))
        if netns is None or _ns_inode(pid, "net") != netns:
            raise ClusterError(f"{node.name}: its namespace holder (pid {pid}) is gone")
        return pid

    def _in_node(self, node: Node) -> list[str]:
        return ["nsenter", "-t", str(self._holder_pid(node)), "-m", "-u", "-n", "--"]

    def _in_cp(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.spec.cp_netns}", "--"]

    def _spawn(self, what: str, argv: Sequence[str]) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{what}.log", "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env(),
                cwd=self.dir,
            )
        self._children.append(proc)
        (self.dir / "pids").mkdir(exist_ok=True)
        (self.dir / "pids" / what).write_text(str(proc.pid))
        return proc.pid

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        argv = [
            *self._in_cp(),
            self._binary("kubectl"),
            f"--kubeconfig={self.kubeconfig_path()}",
            *args,
        ]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(),
        )
        if proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _wait(
        self, what: str, ready: Callable[[], bool], timeout: float, pids: Iterable[str] = ()
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name in pids:
                if not self._alive(name):
                    raise ClusterError(
                        f"{what}: {name} exited; see {self.logs / (name + '.log')}:\n"
                        + _tail(self.logs / f"{name}.log")
                    )
            time.sleep(0.5)
        raise ClusterError(f"{what}: not ready after {timeout:.0f} s (logs in {self.logs})")

    def _alive(self, name: str) -> bool:
        try:
            pid = int((self.dir / "pids" / name).read_text())
        except (OSError, ValueError):
            return False
        return not _zombie(pid)

    # ---- up ----------------------------------------------------------------------------

    def up(self) -> None:
        if (self.dir / "state.json").exists():
            raise ClusterError(
                f"cluster {self.spec.name!r} already exists ({self.dir}); "
                f"run `nftproxy cluster down --name {self.spec.name}` first"
            )
        if self.dir.exists() and any(self.dir.iterdir()):
            raise ClusterError(f"{self.dir} is not empty: a cluster needs a directory of its own")
        # Unix socket paths hold at most 107 bytes, and containerd's live in the directory.
        longest = self.spec.node_dir(self.spec.node(self.spec.nodes)) / "containerd"
        longest = longest / "containerd.sock.ttrpc"
        if (excess := len(str(longest).encode()) - 107) > 0:
            raise ClusterError(
                f"--dir {self.dir}: too long by {excess} bytes for the sockets inside it "
                f"({longest})"
            )
        for ns in self.spec.netns_names():
            if (NETNS_DIR / ns).exists():
                raise ClusterError(f"network namespace {ns} exists already: is the cluster up?")
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "name": self.spec.name,
            "nodes": self.spec.nodes,
            "proxy": self.spec.proxy,
            "netns": self.spec.netns_names(),
            "cgroups": [n.cgroup_root for n in self.spec.all_nodes()],
        }
        # Written first (and only once: two `up`s race here), so that `down` after a crash
        # knows what to look for.
        try:
            with open(self.dir / "state.json", "x") as f:
                f.write(json.dumps(state, indent=2) + "\n")
        except FileExistsError:
            raise ClusterError(f"another `cluster up` is creating {self.dir}") from None
        self._lock = _lock(self.dir)
        try:
            self._up()
        except BaseException:
            log.error(
                "cluster up failed; logs are in %s (`nftproxy cluster down --name %s%s` "
                "removes what it made)",
                self.logs,
                self.spec.name,
                "" if self.dir == default_dir(self.spec.name) else f" --dir {self.dir}",
            )
            raise

    def _up(self) -> None:
        start = time.monotonic()
        self._network()
        tokens = self._credentials()
        self._control_plane()
        archives = self._images()
        for node in self.spec.all_nodes():
            self._node(node, archives)
        self._wait(
            "nodes Ready",
            self._nodes_ready,
            180,
            [f"{n.name}-kubelet" for n in self.spec.all_nodes()],
        )
        self._addons(tokens)
        self._proxies(tokens)
        self._wait("CoreDNS", self._coredns_ready, 180)
        log.info("cluster %s is up in %.0f s", self.spec.name, time.monotonic() - start)

    def _network(self) -> None:
        cp = self.spec.cp_netns
        _run(["ip", "netns", "add", cp], what="netns")
        ip = ["ip", "-n", cp]
        _run([*ip, "link", "set", "lo", "up"], what="cp lo")
        _run([*ip, "link", "add", "br0", "type", "bridge"], what="bridge")
        _run(
            [*ip, "addr", "add", f"{self.spec.cp_ip}/{NODE_NET.prefixlen}", "dev", "br0"],
            what="bridge",
        )
        _run([*ip, "link", "set", "br0", "up"], what="bridge")
        for node in self.spec.all_nodes():
            _run(["ip", "netns", "add", node.netns], what="netns")
            n = ["ip", "-n", node.netns]
            # Both ends are created inside the cluster's namespaces: nothing in the VM's.
            _run(
                [
                    *ip,
                    "link",
                    "add",
                    node.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    node.netns,
                ],
                what="veth",
            )
            _run([*ip, "link", "set", node.name, "master", "br0", "up"], what="veth")
            _run([*n, "link", "set", "lo", "up"], what="lo")
            _run([*n, "addr", "add", f"{node.ip}/{NODE_NET.prefixlen}", "dev", "eth0"], what="addr")
            _run([*n, "link", "set", "eth0", "up"], what="eth0")
            _run(
                ["ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                what="forwarding",
            )
            # A node's own connections to a ClusterIP need a route before DNAT; the proxy
            # rewrites them, and anything it doesn't goes nowhere past the control plane.
            _run([*n, "route", "add", str(SERVICE_NET), "via", self.spec.cp_ip], what="route")
            for other in self.spec.all_nodes():
                if other != node:
                    _run([*n, "route", "add", other.pod_cidr, "via", other.ip], what="route")
            _run([*ip, "route", "add", node.pod_cidr, "via", node.ip], what="route")

    def _credentials(self) -> dict[str, str]:
        self.pki.mkdir(parents=True, exist_ok=True)
        pki.issue(
            self.pki,
            "apiserver",
            cn="kube-apiserver",
            ips=[self.spec.cp_ip, API_SERVICE_IP, "127.0.0.1"],
            dns=[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{DNS_DOMAIN}",
                "localhost",
            ],
        )
        pki.issue(
            self.pki,
            "apiserver-kubelet-client",
            cn="kube-apiserver-kubelet-client",
            org="system:masters",
            server=False,
        )
        for node in self.spec.all_nodes():
            pki.issue(
                self.pki, f"kubelet-{node.name}", cn=node.name, ips=[node.ip], dns=[node.name]
            )
        pki.ensure_service_account_key(self.pki)
        users = [
            pki.Token("admin", ("system:masters",)),
            pki.Token("system:kube-controller-manager"),
            pki.Token("system:kube-scheduler"),
            pki.Token("system:kube-proxy"),
            *(pki.Token(f"system:node:{n.name}", ("system:nodes",)) for n in self.spec.all_nodes()),
        ]
        tokens = pki.token_file(self.pki / "tokens.csv", users)
        kdir = self.dir / "kubeconfig"
        kdir.mkdir(exist_ok=True)
        ca = self.pki / "ca.crt"
        for who, user in [
            ("admin", "admin"),
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
            ("kube-proxy", "system:kube-proxy"),
            *((n.name, f"system:node:{n.name}") for n in self.spec.all_nodes()),
        ]:
            path = kdir / f"{who}.conf"
            path.write_text(kubeconfig(self.spec.server, ca, tokens[user], user))
            path.chmod(0o600)
        return tokens

    def _control_plane(self) -> None:
        cp = self._in_cp()
        p = self.pki
        self._spawn(
            "etcd",
            [
                *cp,
                self._binary("etcd"),
                "--name=etcd",
                f"--data-dir={self.dir / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=etcd=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                *cp,
                self._binary("kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                f"--advertise-address={self.spec.cp_ip}",
                "--secure-port=6443",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--token-auth-file={p / 'tokens.csv'}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{DNS_DOMAIN}",
                f"--service-cluster-ip-range={SERVICE_NET}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--profiling=false",
                "--endpoint-reconciler-type=lease",
            ],
        )
        self._wait("kube-apiserver", self._apiserver_ready, 120, ["etcd", "kube-apiserver"])
        kdir = self.dir / "kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                *cp,
                self._binary("kube-controller-manager"),
                f"--kubeconfig={kdir / 'controller-manager.conf'}",
                f"--authentication-kubeconfig={kdir / 'controller-manager.conf'}",
                f"--authorization-kubeconfig={kdir / 'controller-manager.conf'}",
                "--use-service-account-credentials",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--cluster-cidr={POD_NET}",
                f"--service-cluster-ip-range={SERVICE_NET}",
                "--allocate-node-cidrs=false",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                *cp,
                self._binary("kube-scheduler"),
                f"--kubeconfig={kdir / 'scheduler.conf'}",
                f"--authentication-kubeconfig={kdir / 'scheduler.conf'}",
                f"--authorization-kubeconfig={kdir / 'scheduler.conf'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
        )

    def _apiserver_ready(self) -> bool:
        try:
            return self.kubectl("get", "--raw=/readyz", timeout=10).strip() == "ok"
        except (ClusterError, subprocess.TimeoutExpired):
            return False

    def _images(self) -> list[Path]:
        certs = self.bin / "agnhost-porter"
        if not certs.is_dir():
            raise ClusterError(f"{certs} is missing: run hack/cluster/build.sh")
        return images.write_archives(images.catalog(self.bin, certs), self.bin.parent / "images")

    def _node(self, node: Node, archives: Sequence[Path]) -> None:
        d = self.spec.node_dir(node)
        for sub in ("containerd", "kubelet", "cni", "pod-logs", "volume-plugins", "sysctl"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cni_bin = self.dir / "cni-bin"
        cni_bin.mkdir(exist_ok=True)
        for plugin in CNI_PLUGINS:
            target = cni_bin / plugin
            if not target.exists():
                shutil.copy2(self._binary(plugin), target)
        (d / "cni" / "10-pods.conflist").write_text(cni_config(self.spec, node))
        (d / "containerd" / "config.toml").write_text(containerd_config(self.spec, node, self.bin))
        (d / "kubelet" / "config.yaml").write_text(kubelet_config(self.spec, node))
        (d / "resolv.conf").write_text(resolv_conf())
        for key, value in KUBELET_SYSCTLS.items():
            (d / "sysctl" / key.replace("/", ".")).write_text(value + "\n")
        self._cgroups(node)

        # The namespace holder: a private mount and UTS namespace inside the node's network.
        holder = self._spawn(
            f"{node.name}-holder",
            [
                "nsenter",
                f"--net={NETNS_DIR / node.netns}",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sleep",
                "infinity",
            ],
        )
        (d / "holder.pid").write_text(str(holder))
        deadline = time.monotonic() + 10
        while _ns_inode(holder, "mnt") == _ns_inode(os.getpid(), "mnt") or _ns_inode(
            holder, "uts"
        ) == _ns_inode(os.getpid(), "uts"):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name}: the namespace holder did not start")
            time.sleep(0.05)
        mounts = node_mounts(self.spec, node, self._needed_paths())
        _run([*self._in_node(node), "sh", "-ec", "; ".join(mounts)], what=f"{node.name} mounts")

        sock = d / "containerd" / "containerd.sock"
        self._spawn(
            f"{node.name}-containerd",
            [
                *self._in_node(node),
                self._binary("containerd"),
                f"--config={d / 'containerd' / 'config.toml'}",
            ],
        )
        self._wait(f"{node.name} containerd", sock.exists, 60, [f"{node.name}-containerd"])
        ctr = [*self._in_node(node), self._binary("ctr"), f"--address={sock}", "-n", "k8s.io"]
        for archive in archives:
            _run(
                [*ctr, "images", "import", "--local", str(archive)],
                what=f"{node.name} image import",
                timeout=300,
            )
        self._spawn(
            f"{node.name}-kubelet",
            [
                *self._in_node(node),
                self._binary("kubelet"),
                f"--config={d / 'kubelet' / 'config.yaml'}",
                f"--kubeconfig={self.kubeconfig_path(node.name)}",
                f"--root-dir={d / 'kubelet'}",
                f"--hostname-override={node.name}",
                f"--node-ip={node.ip}",
                f"--node-labels=topology.kubernetes.io/zone={node.zone}",
            ],
        )

    def _needed_paths(self) -> list[Path]:
        """What the node's processes run from: the binaries (and where their links point),
        this Python and its packages, the checkout."""
        paths = {self.bin.resolve(), REPO, Path(sys.prefix), Path(sys.base_prefix)}
        paths |= {p.resolve().parent for p in self.bin.iterdir() if p.is_symlink()}
        paths.add(Path(sys.executable).resolve().parent)
        return sorted(paths)

    def _cgroups(self, node: Node) -> None:
        for hierarchy in _v1_hierarchies():
            path = hierarchy / node.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                # A new cpuset has no CPUs and no memory nodes until given its parent's.
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (path / key).write_text((hierarchy / key).read_text())

    def _nodes_ready(self) -> bool:
        try:
            out = json.loads(self.kubectl("get", "nodes", "-o", "json", timeout=10))
        except (ClusterError, subprocess.TimeoutExpired, ValueError):
            return False
        ready = {
            n["metadata"]["name"]
            for n in out["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n["status"].get("conditions", [])
            )
        }
        return ready >= {n.name for n in self.spec.all_nodes()}

    def _apply(self, objects: Iterable[dict[str, object]]) -> None:
        docs = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "-f", "-", input=json.dumps(docs))

    def _addons(self, tokens: dict[str, str]) -> None:
        self._apply(coredns_manifests(images.COREDNS_IMAGE))

    def _coredns_ready(self) -> bool:
        try:
            out = json.loads(
                self.kubectl(
                    "-n", "kube-system", "get", "deployment", "coredns", "-o", "json", timeout=10
                )
            )
        except (ClusterError, subprocess.TimeoutExpired, ValueError):
            return False
        return int(out.get("status", {}).get("readyReplicas", 0)) >= 1

    def _proxies(self, tokens: dict[str, str]) -> None:
        if self.spec.proxy == "kube-proxy":
            for node in self.spec.all_nodes():
                cfg = self.spec.node_dir(node) / "kube-proxy.yaml"
                cfg.write_text(kube_proxy_config(self.spec, node))
                self._spawn(
                    f"{node.name}-proxy",
                    [*self._in_node(node), self._binary("kube-proxy"), f"--config={cfg}", "--v=2"],
                )
            return
        # nftproxy runs with the RBAC its own deploy/ manifests grant, and a token for
        # that service account.
        for name in ("serviceaccount", "clusterrole", "clusterrolebinding"):
            self.kubectl("apply", "-f", str(repo_file(f"deploy/{name}.yaml")))
        token = self.kubectl(
            "-n", "kube-system", "create", "token", "nftproxy", "--duration=720h"
        ).strip()
        path = self.kubeconfig_path("nftproxy")
        path.write_text(kubeconfig(self.spec.server, self.pki / "ca.crt", token, "nftproxy"))
        path.chmod(0o600)
        for node in self.spec.all_nodes():
            self._spawn(
                f"{node.name}-proxy",
                [
                    *self._in_node(node),
                    sys.executable,
                    "-m",
                    "nftproxy",
                    "run",
                    f"--kubeconfig={path}",
                    f"--node-name={node.name}",
                    f"--node-ip={node.ip}",
                    f"--cluster-cidr={POD_NET}",
                    f"--service-cidr={SERVICE_NET}",
                    "--v=2",
                ],
            )

    # ---- down --------------------------------------------------------------------------

    def members(self) -> list[int]:
        """PIDs of every process that is part of this cluster (see the module docstring)."""
        netns = {i for i in (_inode(str(NETNS_DIR / ns)) for ns in self.spec.netns_names()) if i}
        mntns: set[int] = set()
        for node in self.spec.all_nodes():
            try:
                pid = int((self.spec.node_dir(node) / "holder.pid").read_text())
            except (OSError, ValueError):
                continue
            if _ns_inode(pid, "net") in netns and (m := _ns_inode(pid, "mnt")) is not None:
                mntns.add(m)
        found = set()
        for pid in _pids():
            if pid == os.getpid():
                continue
            if _ns_inode(pid, "net") in netns or _ns_inode(pid, "mnt") in mntns:
                found.add(pid)
        for node in self.spec.all_nodes():
            for hierarchy in hierarchies():
                found.update(_cgroup_procs(hierarchy / node.cgroup_root.lstrip("/")))
        found.discard(os.getpid())
        return sorted(found)

    def down(self, *, force: bool = False) -> list[str]:
        """Stop and remove everything; returns what could not be removed (empty: all gone).

        Only a directory holding this cluster's state is acted on: never namespaces of the
        same names that some other tool made, never a directory `up` did not create. When
        the directory itself is gone (deleted under a running cluster), `force` says the
        namespaces of the cluster's names are its own."""
        if not self.dir.exists():
            leftover = [ns for ns in self.spec.netns_names() if (NETNS_DIR / ns).exists()]
            if not leftover:
                return []
            if not force:
                raise ClusterError(
                    f"{self.dir} is gone, but network namespaces {', '.join(leftover)} exist; "
                    f"if they are cluster {self.spec.name}'s, add --force to remove them"
                )
            return self._remove(None)
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"{self.dir} holds no cluster state ({exc}): not touching it, nor namespaces "
                "named like the cluster's"
            ) from None
        if state.get("name") != self.spec.name:
            raise ClusterError(
                f"{self.dir} holds cluster {state.get('name')!r}, not {self.spec.name!r}"
            )
        return self._remove(self._lock or _lock(self.dir, wait=False))

    def _remove(self, lock: IO[str] | None) -> list[str]:
        left: list[str] = []
        ours = set(self.members())
        # The kubelets first, so that nothing restarts what goes next.
        for node in self.spec.all_nodes():
            _stop_by_file(self.dir / "pids" / f"{node.name}-kubelet", ours)
        for node in self.spec.all_nodes():
            sock = self.spec.node_dir(node) / "containerd" / "containerd.sock"
            if sock.exists():
                with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
                    _run(
                        [
                            *self._in_node(node),
                            self._binary("crictl"),
                            f"--runtime-endpoint=unix://{sock}",
                            "rmp",
                            "-fa",
                        ],
                        what="remove pods",
                        timeout=60,
                        check=False,
                    )
        for node in self.spec.all_nodes():
            if self.spec.proxy == "nftproxy":
                _stop_by_file(self.dir / "pids" / f"{node.name}-proxy", ours)
        for attempt in range(3):
            pids = self.members()
            if not pids:
                break
            _signal_all(pids, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
            _wait_gone(pids, 10)
        if pids := self.members():
            left.append(f"processes still running: {pids}")
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        for node in self.spec.all_nodes():
            for hierarchy in hierarchies():
                path = hierarchy / node.cgroup_root.lstrip("/")
                if path.exists() and not _remove_cgroup(path):
                    left.append(f"cgroup {path}")
        for ns in self.spec.netns_names():
            if (NETNS_DIR / ns).exists():
                proc = subprocess.run(
                    ["ip", "netns", "delete", ns], capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    left.append(f"network namespace {ns}: {proc.stderr.strip()}")
        if not left and self.dir.exists():
            _unmount_under(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dir.exists():
                left.append(f"directory {self.dir}")
            elif self.dir == default_dir(self.spec.name):
                with contextlib.suppress(OSError):  # other clusters may live there
                    self.dir.parent.rmdir()
        if lock is not None:
            lock.close()
        self._lock = None
        return left

    def exec(self, argv: Sequence[str]) -> int:
        """Run a command in the control plane's namespace, where the API and nodes are reachable."""
        argv = list(argv[1:] if argv and argv[0] == "--" else argv) or [
            os.environ.get("SHELL", "/bin/sh")
        ]
        env = self.env(KUBECONFIG=str(self.kubeconfig_path()))
        return subprocess.run([*self._in_cp(), *argv], env=env, check=False).returncode

    # ---- status ------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        for node in self.spec.all_nodes():
            names += [f"{node.name}-containerd", f"{node.name}-kubelet", f"{node.name}-proxy"]
        processes = {name: self._alive(name) for name in names}
        nodes: object = None
        if processes["kube-apiserver"]:
            try:
                nodes = self.kubectl("get", "nodes", "-o", "wide", timeout=10)
            except (ClusterError, subprocess.TimeoutExpired):
                nodes = None
        return {
            "dir": str(self.dir),
            "proxy": self.spec.proxy,
            "processes": processes,
            "nodes": nodes,
        }


def _lock(d: Path, *, wait: bool = True) -> IO[str]:
    """An exclusive lock on the cluster's directory, held while `up` or `down` works on it."""
    f = open(d / ".lock", "a")  # noqa: SIM115 - held open as the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ClusterError(f"`cluster up` of {d} is still running: stop it first") from None
    return f


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cgroup_procs(path: Path) -> set[int]:
    found: set[int] = set()
    if not path.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
    return found


def _remove_cgroup(path: Path) -> bool:
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
    return not path.exists()


def _stop_by_file(pidfile: Path, ours: set[int], grace: float = 10) -> None:
    """Stop the process a pid file names, if it is still one of the cluster's (after a
    reboot, or once it died, the number may belong to anything)."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    if pid not in ours:
        return
    _signal_all([pid], signal.SIGTERM)
    _wait_gone([pid], grace)


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet: not running either way."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] in "ZX"
    except OSError:
        return True


def _unmount_under(d: Path) -> None:
    """Unmount anything left mounted under the cluster's directory in this mount namespace."""
    targets = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point == str(d) or point.startswith(str(d) + "/"):
                targets.append(point)
    for point in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
