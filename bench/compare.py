#!/usr/bin/env python3
"""Side by side: nftproxy, upstream kube-proxy (iptables and nftables modes) and nftlb.

    sudo .venv/bin/python bench/compare.py            # N = 400, 1k, 5k, 10k, 30k (< 60 min)
    sudo .venv/bin/python bench/compare.py --quick    # N = 400, 1k (< 5 min)
    .venv/bin/python bench/compare.py --render bench/results/<date>.json   # docs only

One kube-apiserver + etcd (nftproxy.lab.apiserver) holds N ClusterIP Services x 10 ready
endpoints; sizes run in ascending order and the objects are only ever added. For each N
and each proxy, in a fresh set of network namespaces:

    ext (client) --veth-- node (the proxy) --veth-- pods (every endpoint address is local)

`pods` has `local` routes for the endpoint ranges, so one TCP server on 0.0.0.0:8080
answers every endpoint of every Service. The proxy starts with the objects present (the
API proxies) or gets them over its REST API (nftlb), and the script measures:

- sync: proxy start (nftlb: first POST) -> a TCP connect from ext to the LAST Service's
  ClusterIP succeeds (every proxy here commits its first sync at once, so the last
  Service working means the table is complete); the proxies' own first-sync figure too;
- one change: an endpoint IP of one Service replaced (PUT of its EndpointSlice; nftlb: its
  REST call) -> the kernel's netlink notification carrying the new address
  (nftproxy.lab.element_monitor --anywhere in the node namespace), 5 Services (3 when they
  take more than a minute), median and max;
- peak RSS (VmHWM) of the proxy process, and chains, rules, sets, elements in the node
  namespace's nftables (`nft -j list ruleset`); kube-proxy's iptables mode runs twice,
  on iptables-nft (Debian 12's default) and on iptables-legacy (x_tables, read with
  iptables-legacy-save; its one-change time is kube-proxy's own end-of-sync timestamp);
- data plane: TCP connect latency p50/p99 from ext to the first, middle and last Service
  (--connects each), and new connections per second for 3 s
  (nftproxy.lab.connect_probe).

A proxy that has not synced within --limit seconds (default 600) is stopped and recorded
as "> 10 min"; it is not run at larger N. nftlb holds at most 4095 backends in all, so it
runs at N = 400 (4,000 backends) only; that is why N = 400 is in the list.

Needs root, `hack/k8s/build.sh kube-proxy`, and the Debian packages nftables, iptables and
nftlb (bench/README.md). Every namespace is created by this run with a unique name and
deleted at the end, also after an error or Ctrl-C; processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import api as apibench  # bench/api.py: API client, object bodies, processes
from anchors import kubeproxy, nftlb
from common import ip4, machine_info, write_markdown

from nftproxy.lab import apiserver as kube
from nftproxy.lab.processes import descendants, kill_if_unchanged

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

MARK_BEGIN = "<!-- compare:begin -->"
MARK_END = "<!-- compare:end -->"
PROXIES = (
    "nftproxy",
    "kube-proxy-nftables",
    "kube-proxy-iptables",
    "kube-proxy-iptables-legacy",
    "nftlb",
)
DEFAULT_SIZES = "400,1000,5000,10000,30000"
QUICK_SIZES = "400,1000"
ENDPOINTS = 10
NFTLB_MAX_SERVICES = nftlb.MAX_BACKENDS // ENDPOINTS  # 409 at 10 endpoints each

NODE_NAME = "node-a"
EXT_IP, NODE_EXT_IP = "192.168.77.100", "192.168.77.1"
NODE_POD_IP, PODS_IP = "192.168.88.1", "192.168.88.2"
SERVICE_CIDR = "10.96.0.0/12"
# bench/api.py's endpoint addresses, 10.128.0.0 + i * 10 + j: 300k of them at 30k Services.
POD_RANGE = "10.128.0.0/13"
NEW_RANGE = "10.201.0.0/16"  # addresses the one-endpoint changes put in
NEW_BASE = (10 << 24) | (201 << 16)
CLUSTER_CIDR = "10.128.0.0/9"
SERVICE_PORT = 80
VIP_BASE = (10 << 24) | (96 << 16) | (1 << 8)  # ClusterIPs chosen here: 10.96.1.0 + i
CHANGES = 5
CHANGES_BUDGET_S = 60.0
CHANGE_TIMEOUT_S = 180.0  # kube-proxy's nftables mode needed 11 s a change at 10k


mono = apibench.mono


# --- namespaces and processes: everything made here is undone here -----------------------


def sh(ns: str, *argv: str, timeout: float = 600.0) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{ns}: {shlex.join(argv)}: {proc.stderr.strip()[:500]}")
    return proc.stdout


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Topology:
    """ext -- node -- pods, closed: veths only between these three, no route out."""

    prefix: str
    ext: str = ""
    node: str = ""
    pods: str = ""
    server: subprocess.Popen[Any] | None = None

    def build(self) -> Topology:
        self.ext = apibench.netns_add(f"{self.prefix}-ext")
        self.node = apibench.netns_add(f"{self.prefix}-node")
        self.pods = apibench.netns_add(f"{self.prefix}-pods")
        for ns in (self.ext, self.node, self.pods):
            sh(ns, "ip", "link", "set", "lo", "up")
        # veth pairs are created inside `node` and one end moved: never in the root namespace.
        sh(self.node, "ip", "link", "add", "to-ext", "type", "veth", "peer", "name", "uplink")
        sh(self.node, "ip", "link", "set", "uplink", "netns", self.ext)
        sh(self.node, "ip", "link", "add", "to-pods", "type", "veth", "peer", "name", "pods0")
        sh(self.node, "ip", "link", "set", "pods0", "netns", self.pods)
        sh(self.ext, "ip", "addr", "add", f"{EXT_IP}/24", "dev", "uplink")
        sh(self.ext, "ip", "link", "set", "uplink", "up")
        sh(self.ext, "ip", "route", "add", SERVICE_CIDR, "via", NODE_EXT_IP)
        sh(self.node, "ip", "addr", "add", f"{NODE_EXT_IP}/24", "dev", "to-ext")
        sh(self.node, "ip", "addr", "add", f"{NODE_POD_IP}/24", "dev", "to-pods")
        sh(self.node, "ip", "link", "set", "to-ext", "up")
        sh(self.node, "ip", "link", "set", "to-pods", "up")
        for cidr in (POD_RANGE, NEW_RANGE):
            sh(self.node, "ip", "route", "add", cidr, "via", PODS_IP)
            # Every address of the range is local in `pods`: one server answers them all.
            sh(self.pods, "ip", "route", "add", "local", cidr, "dev", "lo")
        sh(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Until the proxy's rules exist, the ClusterIPs are unreachable and `node` answers
        # with ICMP; rate-limited, the waiter's connects would hang for their timeout and
        # the sync time would be read in steps of ~0.2 s.
        sh(self.node, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        sh(self.pods, "ip", "addr", "add", f"{PODS_IP}/24", "dev", "pods0")
        sh(self.pods, "ip", "link", "set", "pods0", "up")
        sh(self.pods, "ip", "route", "add", "192.168.77.0/24", "via", NODE_POD_IP)
        self.server = apibench.start_proc(
            [
                *("ip", "netns", "exec", self.pods, sys.executable, "-m", "nftproxy.lab.echo"),
                *("--name", "pods", "--tcp", "8080", "--max-seconds", "7200"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.server.stdout is not None
        if b"ready" not in self.server.stdout.readline():
            raise RuntimeError("the endpoint server in the pods namespace did not start")
        return self

    def destroy(self) -> None:
        if self.server is not None:
            apibench.stop_proc(self.server, grace=5)
        for ns in (self.ext, self.node, self.pods):
            if ns:
                apibench.netns_del(ns)


# --- probes ------------------------------------------------------------------------------


def start_probe(ns: str, probe: str, *args: str) -> subprocess.Popen[str]:
    """`python -m nftproxy.lab.<probe>` inside `ns`, once it has printed "ready"."""
    proc = apibench.start_proc(
        ["ip", "netns", "exec", ns, sys.executable, "-m", f"nftproxy.lab.{probe}", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        apibench.stop_proc(proc, grace=2)
        raise RuntimeError(f"nftproxy.lab.{probe} did not start in {ns}")
    return proc


class Waiter:
    """connect_probe wait in ext: when a connect to `addr` first succeeds."""

    def __init__(self, ext: str, addr: str, timeout: float) -> None:
        self.proc = start_probe(ext, "connect_probe", "wait", addr, "--timeout", str(timeout))

    def result(self) -> tuple[float, str] | None:
        """CLOCK_MONOTONIC of the first success and what the server said, or None at the
        timeout."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        apibench.stop_proc(self.proc, grace=2)
        if not line:
            return None
        stamp, _, said = line.partition(" ")
        return float(stamp), said

    def stop(self) -> None:
        apibench.stop_proc(self.proc, grace=2)


class ChangeMonitor:
    """element_monitor --anywhere in the node namespace: when new addresses land."""

    def __init__(self, node: str) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = start_probe(node, "element_monitor", "--anywhere", "--prefix", "10.201.")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, _, ip = line.strip().partition(" ")
            with self.cond:
                self.seen.setdefault(ip, float(stamp))
                self.cond.notify_all()

    def wait(self, ip: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: ip in self.seen, timeout)
            return self.seen.get(ip)

    def stop(self) -> None:
        apibench.stop_proc(self.proc, grace=2)
        self.thread.join(5)


def probe_json(ext: str, *args: str) -> dict[str, Any]:
    out = sh(ext, sys.executable, "-m", "nftproxy.lab.connect_probe", *args, timeout=900)
    result: dict[str, Any] = json.loads(out)
    return result


def ruleset_counts(ns: str) -> dict[str, int]:
    """Tables, chains, rules, named sets and maps, their elements, and the elements of
    anonymous sets and maps written inside rules, over every table in the namespace."""
    doc = json.loads(sh(ns, "nft", "-j", "list", "ruleset", timeout=900))
    counts = dict.fromkeys(
        ("tables", "chains", "rules", "sets", "elements", "anonymous_elements"), 0
    )

    def anonymous(node: Any) -> int:
        if isinstance(node, dict):
            if "set" in node and isinstance(node["set"], list):
                return len(node["set"])
            return sum(anonymous(v) for v in node.values())
        if isinstance(node, list):
            return sum(anonymous(v) for v in node)
        return 0

    for item in doc.get("nftables", ()):
        if "table" in item:
            counts["tables"] += 1
        elif "chain" in item:
            counts["chains"] += 1
        elif "rule" in item:
            counts["rules"] += 1
            counts["anonymous_elements"] += anonymous(item["rule"].get("expr", ()))
        elif "set" in item or "map" in item:
            counts["sets"] += 1
            counts["elements"] += len((item.get("set") or item["map"]).get("elem", ()))
    return counts


def stop_with_children(proxy: Proxy) -> None:
    """Stop the proxy, then whatever it had started that is still running (by PID)."""
    try:
        kids = descendants(proxy.pid())
    except AssertionError:  # not started
        kids = []
    proxy.stop()
    kill_if_unchanged(kids)


def hwm_mb(pid: int) -> dict[str, float]:
    mem = apibench.proc_mem_mb(pid)
    return {"rss_mb": mem.get("VmRSS", float("nan")), "hwm_mb": mem.get("VmHWM", float("nan"))}


# --- the cluster in the API ------------------------------------------------------------


@dataclass
class Cluster:
    api: apibench.Api
    kubeconfig: Path
    created: int = 0
    ips: list[list[str]] = field(default_factory=list)
    vips: list[str] = field(default_factory=list)

    def grow(self, n: int, log: Callable[[str], None]) -> dict[str, Any]:
        """Add Services created..n-1 with their slices; learn every ClusterIP."""
        if n <= self.created:
            return {"objects": 0, "seconds": 0.0}
        t = mono()
        errors: list[str] = []
        new_ips = [
            [ip4(apibench.POD_IP_BASE + i * ENDPOINTS + j) for j in range(ENDPOINTS)]
            for i in range(self.created, n)
        ]

        def create(i: int) -> None:
            ns = f"bench-{i % apibench.NAMESPACES}"
            # A chosen ClusterIP: the apiserver's random allocation slows down to tens
            # of Services a second past 20k (seen with v1.36.3 on 2 CPUs).
            body = apibench.service_body(i, ip4(VIP_BASE + i))
            status, out = self.api.request("POST", f"/api/v1/namespaces/{ns}/services", body)
            if status != 201:
                errors.append(f"service {i}: {status} {str(out)[:200]}")
            status, out = self.api.request(
                "POST",
                apibench.slice_path(i, name=False),
                apibench.slice_body(i, new_ips[i - self.created]),
            )
            if status != 201:
                errors.append(f"slice {i}: {status} {str(out)[:200]}")

        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(apibench.CREATE_WORKERS) as pool:
            list(pool.map(create, range(self.created, n)))
        if errors:
            raise RuntimeError("create errors: " + "; ".join(errors[:5]))
        self.ips.extend(new_ips)
        self.vips = self._cluster_ips(n)
        done = {"objects": 2 * (n - self.created), "seconds": mono() - t}
        log(f"N={n}: created {done['objects']} objects in {done['seconds']:.0f}s")
        self.created = n
        return done

    def _cluster_ips(self, n: int) -> list[str]:
        vips = [""] * n
        cont = ""
        while True:
            path = "/api/v1/services?limit=5000" + (f"&continue={cont}" if cont else "")
            status, out = self.api.request("GET", path)
            if status != 200:
                raise RuntimeError(f"list services: {status}")
            for item in out["items"]:
                name = item["metadata"]["name"]
                if name.startswith("svc-"):
                    i = int(name[4:])
                    if i < n:
                        vips[i] = item["spec"]["clusterIP"]
            cont = out["metadata"].get("continue") or ""
            if not cont:
                break
        if not all(vips):
            raise RuntimeError("some Services have no ClusterIP")
        return vips

    def change(self, i: int, new_ip: str) -> float:
        """Replace endpoint 0 of Service i; the time the PUT was sent."""
        self.ips[i][0] = new_ip
        t = mono()
        status, out = self.api.request(
            "PUT", apibench.slice_path(i), apibench.slice_body(i, self.ips[i])
        )
        if status != 200:
            raise RuntimeError(f"PUT slice {i}: {status} {str(out)[:200]}")
        return t


# --- one proxy at one size ---------------------------------------------------------------


class Proxy:
    """How one proxy under test is started, told about changes, and stopped."""

    name = ""

    def start(self, topo: Topology, n: int, workdir: Path) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def own_sync_s(self, topo: Topology) -> float | None:
        """The proxy's own figure for its first sync, when it reports one."""
        return None

    def change(self, i: int, new_ip: str) -> float:
        raise NotImplementedError

    def change_latency(
        self, topo: Topology, monitor: ChangeMonitor, i: int, new_ip: str
    ) -> float | None:
        """Milliseconds from the change to the kernel, None when it never arrived."""
        sent = self.change(i, new_ip)
        seen = monitor.wait(new_ip, CHANGE_TIMEOUT_S)
        return None if seen is None else (seen - sent) * 1e3

    def counts(self, topo: Topology) -> dict[str, Any]:
        return ruleset_counts(topo.node)

    def check(self, topo: Topology, n: int) -> dict[str, Any]:
        """Facts that tell whether the sync was really complete, when there are any."""
        return {}

    def stop(self) -> None:
        raise NotImplementedError


class NftproxyProxy(Proxy):
    name = "nftproxy"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.proc: subprocess.Popen[Any] | None = None
        self.port = 0

    def start(self, topo: Topology, n: int, workdir: Path) -> None:
        self.port = apibench.free_port()
        argv = [
            *(
                sys.executable,
                "-m",
                "nftproxy",
                "run",
                "--kubeconfig",
                str(self.cluster.kubeconfig),
            ),
            *("--netns", topo.node, "--hostname-override", NODE_NAME, "--node-ip", NODE_EXT_IP),
            *("--cluster-cidr", CLUSTER_CIDR, "--min-sync-period", "0"),
            *("--healthz-bind-address=", f"--metrics-bind-address=127.0.0.1:{self.port}"),
        ]
        with open(workdir / "nftproxy.log", "wb") as logf:
            self.proc = apibench.start_proc(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def own_sync_s(self, topo: Topology) -> float | None:
        with contextlib.suppress(OSError):
            m = apibench.scrape(self.port)
            count = m.get("kubeproxy_sync_proxy_rules_duration_seconds_count", 0)
            if count:
                # The first sync that held everything; later ones are partial and tiny.
                return m.get("kubeproxy_sync_proxy_rules_duration_seconds_sum", 0.0)
        return None

    def change(self, i: int, new_ip: str) -> float:
        return self.cluster.change(i, new_ip)

    def stop(self) -> None:
        if self.proc is not None:
            apibench.stop_proc(self.proc)


class KubeProxyProxy(Proxy):
    def __init__(self, cluster: Cluster, mode: kubeproxy.Mode) -> None:
        self.cluster = cluster
        self.mode = mode
        self.name = f"kube-proxy-{mode}"
        self.kp: kubeproxy.KubeProxy | None = None
        self.port = 0

    def start(self, topo: Topology, n: int, workdir: Path) -> None:
        self.port = 10249
        self.kp = kubeproxy.start(
            self.mode,
            topo.node,
            self.cluster.kubeconfig,
            NODE_NAME,
            NODE_EXT_IP,
            CLUSTER_CIDR,
            self.port,
            workdir,
        )

    def pid(self) -> int:
        assert self.kp is not None
        return self.kp.pid

    def own_sync_s(self, topo: Topology) -> float | None:
        with contextlib.suppress(Exception):
            m = kubeproxy.scrape_metrics(topo.node, self.port)
            total = m.get("kubeproxy_sync_proxy_rules_duration_seconds_sum")
            count = m.get("kubeproxy_sync_proxy_rules_duration_seconds_count")
            if total is not None and count:
                return total / count if count > 1 else total
        return None

    def change(self, i: int, new_ip: str) -> float:
        return self.cluster.change(i, new_ip)

    def change_latency(
        self, topo: Topology, monitor: ChangeMonitor, i: int, new_ip: str
    ) -> float | None:
        if self.mode != "iptables-legacy":
            return super().change_latency(topo, monitor, i, new_ip)
        # x_tables sends no nftables notification: wait for kube-proxy's next sync to end
        # (its own timestamp), then check that the Service's chain jumps to the new address.
        where = kubeproxy.ServicePort(
            f"bench-{i % apibench.NAMESPACES}", f"svc-{i}", "http", "TCP", 8080
        )
        sent_epoch = time.time()
        self.change(i, new_ip)
        after = sent_epoch
        deadline = mono() + CHANGE_TIMEOUT_S
        while mono() < deadline:
            ts = kubeproxy.synced(topo.node, self.port)
            if ts is not None and ts > after:
                if kubeproxy.endpoint_in_kernel(self.mode, topo.node, new_ip, where):
                    return (ts - sent_epoch) * 1e3
                after = ts  # that sync began before the change arrived: wait for the next
            time.sleep(0.005)
        return None

    def counts(self, topo: Topology) -> dict[str, Any]:
        if self.mode != "iptables-legacy":
            return ruleset_counts(topo.node)
        got = kubeproxy.count_objects(self.mode, topo.node)
        tables = sum(1 for k in got if k.endswith("_chains") and got[k])
        return {
            "tables": tables,
            "chains": got["chains"],
            "rules": got["rules"],
            "sets": 0,
            "elements": 0,
            "anonymous_elements": 0,
            "read_with": "iptables-legacy-save (x_tables, not nftables)",
        }

    def stop(self) -> None:
        if self.kp is not None:
            self.kp.stop()


class NftlbProxy(Proxy):
    name = "nftlb"
    KEY = "nftproxy-bench"
    PORT = 5555

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: nftlb.Client | None = None
        self.n = 0

    def start(self, topo: Topology, n: int, workdir: Path) -> None:
        self.n = n
        self.proc = nftlb.start(topo.node, self.PORT, self.KEY, workdir)
        self.client = nftlb.Client(topo.node, self.PORT, self.KEY)
        farms = [
            nftlb.farm_body(f"svc-{i}", self.cluster.vips[i], SERVICE_PORT, self.cluster.ips[i])
            for i in range(n)
        ]
        self.client.post_farms(farms)

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self, topo: Topology, n: int) -> dict[str, Any]:
        # Past its backend cap nftlb still answers "success" but drops farms.
        return {"farms_in_kernel": nftlb.farms_in_kernel(topo.node), "farms_posted": n}

    def change(self, i: int, new_ip: str) -> float:
        assert self.client is not None
        self.cluster.ips[i][0] = new_ip
        t = mono()
        self.client.set_backend_ip(f"svc-{i}", "b0", new_ip)
        return t

    def stop(self) -> None:
        if self.proc is not None:
            nftlb.stop(self.proc)


_topologies = itertools.count()

# Every change in the run gets an address never used before (the objects, and so the
# endpoints, are shared by all proxies and sizes).
_new_addresses = itertools.count(1)


def run_one(
    proxy: Proxy, cluster: Cluster, n: int, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    res: dict[str, Any] = {"proxy": proxy.name, "services": n}
    topo = Topology(f"nftproxy-cmp-{os.getpid()}-{next(_topologies)}")
    with tempfile.TemporaryDirectory(prefix=f"nftproxy-cmp-{proxy.name}-{n}-") as tmp:
        workdir = Path(tmp)
        waiter: Waiter | None = None
        monitor: ChangeMonitor | None = None
        try:
            topo.build()
            first, middle, last = 0, n // 2, n - 1
            target = lambda i: f"{cluster.vips[i]}:{SERVICE_PORT}"  # noqa: E731
            waiter = Waiter(topo.ext, target(last), args.limit)
            # nftlb's farms go in from this thread: the waiter times the same span.
            t0 = mono()
            proxy.start(topo, n, workdir)
            done = waiter.result()
            waiter = None
            if done is None:
                res["sync_s"] = None
                res["timed_out"] = f"> {args.limit / 60:g} min"
                log(f"N={n} {proxy.name}: no sync within {args.limit:g}s; stopped")
                return res
            res["sync_s"] = done[0] - t0
            res["answered"] = done[1]  # "pods <source address the server saw>"
            time.sleep(1.0)  # the sync's aftermath (metrics, logs) settles
            res["own_sync_s"] = proxy.own_sync_s(topo)
            res["after_sync"] = hwm_mb(proxy.pid())
            res.update(proxy.check(topo, n))
            log(f"N={n} {proxy.name}: synced in {res['sync_s']:.2f}s")

            # Data plane first, with every endpoint answering.
            lat = probe_json(
                topo.ext,
                "latency",
                *(target(i) for i in (first, middle, last)),
                "--count",
                str(args.connects),
            )
            res["connect"] = {
                name: lat[target(i)]
                for name, i in (("first", first), ("middle", middle), ("last", last))
            }
            res["rate"] = probe_json(
                topo.ext, "rate", target(first), target(middle), target(last), "--seconds", "3"
            )

            # One-endpoint changes, each on another Service, one at a time.
            monitor = ChangeMonitor(topo.node)
            lat_ms: list[float] = []
            misses = 0
            changes_start = mono()
            for k, i in enumerate(sorted({first, n // 4, middle, 3 * n // 4, last})[:CHANGES]):
                if k >= 3 and mono() - changes_start > CHANGES_BUDGET_S:
                    break  # slow proxies: three changes tell the story, the run stays bounded
                new_ip = ip4(NEW_BASE + next(_new_addresses))
                took = proxy.change_latency(topo, monitor, i, new_ip)
                if took is None:
                    misses += 1
                    break  # the proxy is stuck or far behind: the rest would wait too
                lat_ms.append(took)
                time.sleep(0.3)
            res["change_ms"] = {
                "count": len(lat_ms),
                "misses": misses,
                "median": statistics.median(lat_ms) if lat_ms else None,
                "max": max(lat_ms) if lat_ms else None,
                "all": lat_ms,
            }
            monitor.stop()
            monitor = None
            res.update(hwm_mb(proxy.pid()))
            res["objects"] = proxy.counts(topo)
            log(
                f"N={n} {proxy.name}: change {res['change_ms']['median']} ms, "
                f"HWM {res['hwm_mb']:.0f} MB, connect p50/p99 last "
                f"{res['connect']['last']['p50_ms']}/{res['connect']['last']['p99_ms']} ms, "
                f"{res['rate']['per_second']:.0f} conn/s, {res['objects']}"
            )
        finally:
            for part in (waiter, monitor):
                if part is not None:
                    part.stop()
            stop_with_children(proxy)
            log_path = next(workdir.glob("*.log"), None)
            if log_path is not None:
                with contextlib.suppress(OSError):
                    res["log_tail"] = log_path.read_text(errors="replace").splitlines()[-5:]
            topo.destroy()
    return res


# --- output --------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _row_of(report: dict[str, Any], proxy: str, n: int) -> dict[str, Any] | None:
    return next((r for r in report["results"] if r["proxy"] == proxy and r["services"] == n), None)


def _rows_of_run(report: dict[str, Any], run: int) -> str:
    """Which rows a later invocation supplied: "kube-proxy-nftables, nftproxy at N = [30000]"."""
    rows = [r for r in report["results"] if r.get("run") == run]
    proxies = ", ".join(p for p in PROXIES if any(r["proxy"] == p for r in rows))
    return f"{proxies or 'no rows'} at N = {sorted({r['services'] for r in rows})}"


def markdown(report: dict[str, Any], img_rel: str = "img") -> str:
    m = report["machine"]
    sizes = sorted({r["services"] for r in report["results"]})
    proxies = [p for p in PROXIES if any(r["proxy"] == p for r in report["results"])]
    lines = [
        MARK_BEGIN,
        "## Side by side (`bench/compare.py`)",
        "",
        f"Run {report['date']}: `{report['command']}` ({report['wall_s'] / 60:.0f} min"
        + (", stopped early" if report.get("interrupted") else "")
        + ").  ",
        *(
            f"{_rows_of_run(report, i)} from {a['date']} (nftproxy at "
            f"{a.get('source_commit', m['source_commit'])}): `{a['command']}` "
            f"({a.get('wall_s', 0) / 60:.0f} min).  "
            for i, a in enumerate(report.get("also", ()), 1)
        ),
        *([f"{report['note']}  "] if report.get("note") else []),
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['nft']}, "
        f"Python {m['python']}; kube-apiserver, etcd and kube-proxy {m['kubernetes']} "
        f"built from the Go module proxy; nftlb {report.get('nftlb_version', '?')} "
        f"(Debian); iptables {report.get('iptables_version', '?')}; nftproxy at "
        f"{m['source_commit']}.  ",
        f"Workload: N ClusterIP Services x {ENDPOINTS} ready endpoints (one TCP port), in "
        "the API before the proxy starts (nftlb: the same Services as farms over its REST "
        "API). Everything on one machine: apiserver, etcd, proxy, client and server share "
        "the CPUs.",
        "",
        "### Full sync: proxy start -> the last Service answers (s)",
        "",
        "| N | " + " | ".join(proxies) + " | each / nftproxy |",
        "|---:|" + "---:|" * (len(proxies) + 1),
    ]

    def cell(r: dict[str, Any] | None, key: str, digits: int = 2) -> str:
        if r is None:
            return "not run"
        if "error" in r:
            return "error"
        if r.get("timed_out"):
            return r["timed_out"]
        return fmt(r.get(key), digits)

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
        if not a or not b:
            return ""
        if a.get("timed_out"):
            return f"> {report['args']['limit'] / (b.get(key) or 1):.0f}x"
        x, y = a.get(key), b.get(key)
        return f"{x / y:.1f}x" if x and y else ""

    for n in sizes:
        rows = {p: _row_of(report, p, n) for p in proxies}
        ratios = ", ".join(
            f"{p}: {r}"
            for p in proxies
            if p != "nftproxy" and (r := ratio(rows.get(p), rows.get("nftproxy"), "sync_s"))
        )
        lines.append(
            f"| {n} | " + " | ".join(cell(rows[p], "sync_s") for p in proxies) + f" | {ratios} |"
        )
    lines += [
        "",
        "### One endpoint change: API write (nftlb: REST call) -> kernel, median / max (ms)",
        "",
        "| N | " + " | ".join(proxies) + " |",
        "|---:|" + "---:|" * len(proxies),
    ]
    for n in sizes:
        cells = []
        for p in proxies:
            r = _row_of(report, p, n)
            c = (r or {}).get("change_ms")
            cells.append(
                cell(r, "x")
                if not c
                else f"{fmt(c['median'], 1)} / {fmt(c['max'], 1)}"
                + (f" ({c['misses']} missed)" if c.get("misses") else "")
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Peak RSS of the proxy process (MB) and what it put in the kernel",
        "",
        "| N | proxy | peak RSS MB | tables | chains | rules | sets+maps | elements "
        "| elements inside rules |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for p in proxies:
            r = _row_of(report, p, n)
            if not r or "objects" not in r:
                continue
            o = r["objects"]
            lines.append(
                f"| {n} | {p} | {fmt(r.get('hwm_mb'), 0)} | {o['tables']} | {o['chains']} "
                f"| {o['rules']} | {o['sets']} | {o['elements']} | {o['anonymous_elements']} |"
            )
    lines += [
        "",
        "### Data plane: TCP connect from the external client, p50 / p99 (ms), and new "
        "connections per second",
        "",
        "| N | proxy | first Service | middle Service | last Service | conn/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for p in proxies:
            r = _row_of(report, p, n)
            if not r or "connect" not in r:
                continue
            c = r["connect"]
            parts = [
                f"{fmt(c[w]['p50_ms'], 3)} / {fmt(c[w]['p99_ms'], 3)}"
                + (f" ({c[w]['failures']} failed)" if c[w]["failures"] else "")
                for w in ("first", "middle", "last")
            ]
            lines.append(
                f"| {n} | {p} | " + " | ".join(parts) + f" | {r['rate']['per_second']:.0f} |"
            )
    errors = [r for r in report["results"] if "error" in r]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- N={r['services']} {r['proxy']}: {r['error'][:300]}" for r in errors]
    lines += [
        "",
        f"![sync time vs N]({img_rel}/compare-sync.png) "
        f"![one change vs N]({img_rel}/compare-change.png) "
        f"![connect latency vs N]({img_rel}/compare-connect.png)",
        "",
        "How it is measured: see the docstring of `bench/compare.py` and bench/README.md. "
        f"nftlb caps at {nftlb.MAX_BACKENDS} backends in all (its backend marks), so it runs "
        f"at N = {NFTLB_MAX_SERVICES // 100 * 100} only. A proxy past "
        f"{report['args']['limit']:g} s is stopped, shown as `> N min`, and not run at "
        "larger N. Connects go through the proxy's DNAT to one server that owns every "
        "endpoint address; the client and server are Python, so conn/s measures the "
        "whole machine more than the proxy. kube-proxy-iptables is kube-proxy's iptables "
        "mode on iptables-nft (Debian 12's default backend), kube-proxy-iptables-legacy the "
        "same mode on x_tables; x_tables sends no nftables notification, so its one-change "
        "time is kube-proxy's own end-of-sync timestamp after the PUT (checked by reading "
        "the Service's chain), and its objects are read with iptables-legacy-save. "
        "kube-proxy's nftables mode runs the machine's `nft` "
        f"({report.get('kube_proxy_nft_note', '?').split(': ')[-1]}), which lists the whole "
        "table at the start of every sync.",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], img_dir: Path) -> list[Path]:
    """sync time vs N (log scale) and last-Service connect latency vs N, one line a proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    proxies = [p for p in PROXIES if any(r["proxy"] == p for r in report["results"])]
    out = []

    def save(
        fig: Any, ax: Any, name: str, ylabel: str, title: str, *, log_y: bool, legend: Any = None
    ) -> None:
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("Services (x 10 endpoints)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=legend)
        fig.tight_layout()
        path = img_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    def points(p: str, value: Callable[[dict[str, Any]], Any]) -> list[tuple[int, Any]]:
        return sorted(
            (r["services"], value(r)) for r in report["results"] if r["proxy"] == p and value(r)
        )

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in proxies:
        pts = points(p, lambda r: r.get("sync_s"))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=p)
        stopped = [
            r["services"] for r in report["results"] if r["proxy"] == p and r.get("timed_out")
        ]
        for n in stopped:
            ax.annotate(
                f"{p}: > {report['args']['limit'] / 60:g} min", (n, report["args"]["limit"])
            )
    title = f"Proxy start -> last Service answers ({report['date'][:10]})"
    save(fig, ax, "compare-sync.png", "full sync, s (log)", title, log_y=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in proxies:
        pts = points(p, lambda r: (r.get("change_ms") or {}).get("median"))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=p)
    ylabel = "one endpoint change -> kernel, ms (median, log)"
    save(fig, ax, "compare-change.png", ylabel, "One endpoint change", log_y=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in proxies:
        for which, style in (("p50_ms", "-"), ("p99_ms", "--")):
            pts = points(p, lambda r, w=which: r.get("connect") and r["connect"]["last"][w])
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=f"{p} {which[:3]}")
    ylabel, title = (
        "TCP connect to the last Service, ms",
        "Connect latency from the external client",
    )
    save(fig, ax, "compare-connect.png", ylabel, title, log_y=False, legend=8)
    return out


def publish(
    report: dict[str, Any], out: Path, md: str, img_dir: Path, log: Callable[[str], None]
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out}")
    if md:
        write_markdown(Path(md), markdown(report), MARK_BEGIN, MARK_END)
        log(f"updated {md}")
    try:
        for path in plots(report, img_dir):
            log(f"wrote {path}")
    except ImportError:
        log("matplotlib is missing (pip install -e '.[bench]'): no plots")


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of Service counts")
    p.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES}, fewer connects")
    p.add_argument(
        "--proxies", default=",".join(PROXIES), help="comma list of " + ", ".join(PROXIES)
    )
    p.add_argument("--connects", type=int, default=1000, help="connects per Service measured")
    p.add_argument("--limit", type=float, default=600.0, help="seconds before a sync is given up")
    p.add_argument("--out", help="JSON output (default bench/results/<date>.json)")
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    p.add_argument(
        "--render",
        metavar="JSON[,JSON]",
        help="only redo markdown and plots from saved runs (later files add their sizes)",
    )
    args = p.parse_args(argv)

    start = mono()

    def log(msg: str) -> None:
        print(f"[{mono() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.render:
        paths = [Path(x) for x in args.render.split(",")]
        report = json.loads(paths[0].read_text())
        for extra in paths[1:]:
            # Rows measured by another invocation: new sizes, or a proxy measured again
            # (its rows replace the earlier ones of the same N).
            more = json.loads(extra.read_text())
            run = len(report.get("also", ())) + 1
            rows = [{**r, "run": run} for r in more["results"]]
            again = {(r["proxy"], r["services"]) for r in rows}
            report["results"] = [
                r for r in report["results"] if (r["proxy"], r["services"]) not in again
            ] + rows
            report.setdefault("also", []).append(
                {k: more[k] for k in ("date", "command", "wall_s") if k in more}
                | {"source_commit": more.get("machine", {}).get("source_commit", "?")}
            )
        publish(
            report, Path(args.out) if args.out else paths[0], args.markdown, Path(args.img_dir), log
        )
        return 0
    if args.quick:
        args.sizes = QUICK_SIZES
        args.connects = min(args.connects, 1000)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    wanted = [x.strip() for x in args.proxies.split(",") if x.strip()]
    unknown = set(wanted) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("bench/compare.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    missing = [t for t in ("nft", "ip") if shutil.which(t) is None]
    if any(x.startswith("kube-proxy") for x in wanted):
        kubeproxy.binary()  # raises with the build command when missing
    if "kube-proxy-iptables" in wanted:
        kubeproxy.require_iptables("iptables")
    if "kube-proxy-iptables-legacy" in wanted:
        kubeproxy.require_iptables("iptables-legacy")
    if "nftlb" in wanted and shutil.which("nftlb") is None:
        missing.append("nftlb")
    if missing:
        print(f"missing: {', '.join(missing)} (see bench/README.md)", file=sys.stderr)
        return 1
    try:
        kube.find_binaries()
    except kube.BinariesMissing as exc:
        print(f"bench/compare.py {exc}", file=sys.stderr)
        return 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    today = dt.date.today().isoformat()
    out = (
        Path(args.out)
        if args.out
        else BENCH / "results" / (f"{today}-quick.json" if args.quick else f"{today}.json")
    )
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(kubernetes=kube.kubernetes_version()),
        "nftlb_version": _version(["dpkg-query", "-W", "-f", "${Version}", "nftlb"]),
        "iptables_version": _version(["iptables-nft", "--version"]),
        "kube_proxy_nft_note": "kube-proxy runs `nft` from PATH: " + _version(["nft", "--version"]),
        "args": vars(args),
        "results": [],
    }
    code = 0
    given_up: set[str] = set()
    try:
        with tempfile.TemporaryDirectory(prefix="nftproxy-cmp-") as tmp:
            cp = kube.start_control_plane(Path(tmp) / "cp", watch_cache=True)
            try:
                api = apibench.Api(cp)
                for k in range(apibench.NAMESPACES):
                    body = {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": f"bench-{k}"},
                    }
                    api.request("POST", "/api/v1/namespaces", body)
                status, out_body = api.request(
                    "POST", "/api/v1/nodes", kubeproxy.node_body(NODE_NAME, NODE_EXT_IP)
                )
                if status not in (201, 409):
                    raise RuntimeError(f"create Node: {status} {out_body}")
                cluster = Cluster(api, cp.kubeconfig(Path(tmp) / "kubeconfig", cp.admin_token))
                for n in sizes:
                    cluster.grow(n, log)
                    for name in wanted:
                        if name in given_up:
                            continue
                        if name == "nftlb" and n > NFTLB_MAX_SERVICES:
                            continue
                        proxy: Proxy
                        if name == "nftproxy":
                            proxy = NftproxyProxy(cluster)
                        elif name == "nftlb":
                            proxy = NftlbProxy(cluster)
                        else:
                            mode = name.removeprefix("kube-proxy-")
                            proxy = KubeProxyProxy(cluster, mode)  # type: ignore[arg-type]
                        try:
                            r = run_one(proxy, cluster, n, args, log)
                        except (
                            RuntimeError,
                            OSError,
                            subprocess.SubprocessError,
                            kubeproxy.KubeProxyError,
                            nftlb.NftlbError,
                        ) as exc:
                            log(f"N={n} {name}: failed: {exc}")
                            r = {"proxy": name, "services": n, "error": str(exc)}
                            code = 2
                        if r.get("timed_out"):
                            given_up.add(name)
                        report["results"].append(r)
                        report["wall_s"] = mono() - start
                        out.parent.mkdir(parents=True, exist_ok=True)
                        out.write_text(json.dumps(report, indent=1) + "\n")  # progress
            finally:
                cp.stop()
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); cleaning up")
        report["interrupted"] = str(exc) or "Ctrl-C"
        code = 130
    finally:
        apibench.cleanup_all()  # processes, then namespaces
        report["wall_s"] = mono() - start
        publish(report, out, args.markdown, Path(args.img_dir), log)
    return code


if __name__ == "__main__":
    sys.exit(main())
