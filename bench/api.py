#!/usr/bin/env python3
"""API benchmark: `nftproxy run` against a real kube-apiserver with N Services.

    python bench/api.py [--sizes 1000,10000,30000] [--endpoints 10] [--rate 100]
                        [--seconds 60] [--min-sync-period 0] [--quick]
                        [--out bench/results/api-<date>.json] [--markdown docs/benchmarks.md]

For each N: start etcd + kube-apiserver on loopback (nftproxy.lab.apiserver), create N
ClusterIP Services and N EndpointSlices (E endpoints each over 3 nodes), then

1. cold start: start the daemon into a fresh network namespace and time process start ->
   first full sync in the kernel (the daemon's own last-sync timestamp from /metrics,
   checked against the number of elements in the frontends map); RSS afterwards;
2. event-to-kernel: change one endpoint IP per PUT at --rate changes/s for --seconds and
   time each PUT's send -> the kernel's notification of the new IP's map element in the
   namespace (nftproxy.lab.element_monitor).

Needs root. Everything runs in network namespaces `nftproxy-apibench-<pid>-<n>` and on
127.0.0.1; the namespaces and every process started here are removed/stopped on exit,
also after an error, Ctrl-C or SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (  # bench/common.py
    Api,
    ip4,
    machine_info,
    netns_add,
    netns_del,
    netns_del_all,
    on_signal,
    pct,
    proc_cpu_s,
    proc_mem_mb,
    save_report,
    write_markdown,
)

from nftproxy.lab import apiserver as kube
from nftproxy.lab.processes import die_with_parent, stop_processes

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {"cold_start_s": 10.0, "event_p99_ms": 50.0, "rss_mb": 150.0}
MARK_BEGIN = "<!-- api:begin -->"
MARK_END = "<!-- api:end -->"

NAMESPACES = 10  # Services are spread over bench-0 .. bench-9
NODES = ("node-a", "node-b", "node-c")  # the daemon runs as node-a
POD_IP_BASE = (10 << 24) | (128 << 16)  # 10.128.0.0 + k: unique per endpoint
NEW_IP_BASE = (10 << 24) | (200 << 16)
CLUSTER_IP_BASE = (
    (10 << 24) | (96 << 16) | (1 << 8)
)  # 10.96.1.0 + i  # replacement IPs: 10.200.x.y, never used before
NEW_IP_RE = re.compile(rb"\b10\.200\.\d{1,3}\.\d{1,3}\b")
CREATE_WORKERS = 16
CHANGE_WORKERS = 8
GRACE_S = 5.0  # after the last change: how long to wait for stragglers


def mono() -> float:
    return time.monotonic()


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": pct(values, 0.50),
        "p90": pct(values, 0.90),
        "p99": pct(values, 0.99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# --- cleanup: namespaces and processes we started ------------------------------------

_procs: list[subprocess.Popen[Any]] = []


def stop_proc(proc: subprocess.Popen[Any], grace: float = 30.0) -> int | None:
    """SIGTERM this one process (by its PID), SIGKILL after `grace`; its exit status."""
    stop_processes([proc], grace)
    if proc in _procs:
        _procs.remove(proc)
    return proc.returncode


def cleanup_all() -> None:
    for proc in list(_procs):
        stop_proc(proc, grace=10)
    netns_del_all()


def start_proc(argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
    # Started from the main thread: PR_SET_PDEATHSIG (tied to the forking thread) then
    # kills the child if this script dies without cleaning up.
    proc = subprocess.Popen(argv, preexec_fn=die_with_parent, **kw)
    _procs.append(proc)
    return proc


# --- proc and metrics readers ----------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """/metrics as {series: value} (unparsed label sets kept in the key)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_body(i: int, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": f"bench-{i % NAMESPACES}"},
        "spec": spec,
    }


def slice_body(i: int, ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-a",
            "namespace": f"bench-{i % NAMESPACES}",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "nodeName": NODES[(i + j) % len(NODES)],
                "conditions": {"ready": True},
            }
            for j, ip in enumerate(ips)
        ],
    }


def slice_path(i: int, name: bool = True) -> str:
    base = f"/apis/discovery.k8s.io/v1/namespaces/bench-{i % NAMESPACES}/endpointslices"
    return f"{base}/svc-{i}-a" if name else base


def create_objects(api: Api, n: int, e: int, log: Any) -> tuple[dict[str, Any], list[list[str]]]:
    for k in range(NAMESPACES):
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{k}"}}
        status, out = api.request("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise RuntimeError(f"namespace bench-{k}: {status} {out}")
    ips = [[ip4(POD_IP_BASE + i * e + j) for j in range(e)] for i in range(n)]
    errors: list[str] = []

    def create(i: int) -> None:
        status, out = api.request(
            "POST",
            f"/api/v1/namespaces/bench-{i % NAMESPACES}/services",
            # A chosen ClusterIP: the apiserver's random allocation slows to tens of
            # Services a second past 20k (v1.36.3 on 2 CPUs).
            service_body(i, ip4(CLUSTER_IP_BASE + i)),
        )
        if status != 201:
            errors.append(f"service {i}: {status} {str(out)[:200]}")
        status, out = api.request("POST", slice_path(i, name=False), slice_body(i, ips[i]))
        if status != 201:
            errors.append(f"slice {i}: {status} {str(out)[:200]}")

    t = mono()
    with concurrent.futures.ThreadPoolExecutor(CREATE_WORKERS) as pool:
        for done, _ in enumerate(pool.map(create, range(n)), 1):
            if done % 5000 == 0:
                log(f"N={n}: created {done} Services + slices ({done * 2 / (mono() - t):.0f}/s)")
            if len(errors) > 20:
                raise RuntimeError("too many create errors: " + "; ".join(errors[:5]))
    wall = mono() - t
    if errors:
        raise RuntimeError("create errors: " + "; ".join(errors[:5]))
    return {"objects": 2 * n, "seconds": wall, "per_second": 2 * n / wall}, ips


# --- the daemon ------------------------------------------------------------------------

LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(path: Path) -> dict[str, float]:
    """Wall-clock (epoch) times of the daemon's first log lines of interest."""
    wanted = {
        "serving": "from the Kubernetes API",
        "listed_services": "services: listed",
        "listed_slices": "endpointslices: listed",
        "full_sync_logged": "full sync:",
    }
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            m = LOG_TS.match(line)
            if not m:
                continue
            for key, needle in wanted.items():
                if key not in out and needle in line:
                    stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    out[key] = stamp.timestamp()
            if len(out) == len(wanted):
                break
    return out


def list_map(netns: str, name: str) -> tuple[int, str]:
    """(generation, listing) of map g<gen>-<name>, newest generation first; (0, "") if none.

    The first full sync builds generation 1; a later full sync builds the next one beside
    it and deletes the old, so the current generation is not always 1.
    """
    for gen in range(9, 0, -1):
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "nft",
                "list",
                "map",
                "inet",
                "nftproxy",
                f"g{gen}-{name}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return gen, proc.stdout
    return 0, ""


def count_frontends(netns: str) -> tuple[int, int]:
    gen, text = list_map(netns, "frontends4")
    return gen, text.count(": goto ")


def start_daemon(
    kubeconfig: Path, netns: str, metrics_port: int, min_sync: float, log_path: Path
) -> tuple[subprocess.Popen[Any], float]:
    argv = [
        sys.executable,
        "-m",
        "nftproxy",
        "run",
        "-v",
        "--kubeconfig",
        str(kubeconfig),
        "--netns",
        netns,
        "--hostname-override",
        "node-a",
        "--node-ip",
        "192.168.0.1",
        "--min-sync-period",
        str(min_sync),
        "--healthz-bind-address=",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
    ]
    logf = open(log_path, "wb")  # noqa: SIM115 - the child holds it; closed below
    try:
        t0 = time.time()
        proc = start_proc(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    finally:
        logf.close()
    return proc, t0


def cold_start(
    proc: subprocess.Popen[Any], t0: float, port: int, n: int, netns: str, log_path: Path
) -> dict[str, Any]:
    # The daemon may sync before its LISTs are complete (an empty skeleton): every new
    # sync timestamp is checked against the frontends map until it holds all N.
    deadline = mono() + 900
    last_seen, syncs_seen, done, gen, frontends = 0.0, 0, 0.0, 0, 0
    prev_sum = last_dur = 0.0
    total = "kubeproxy_sync_proxy_rules_duration_seconds_sum"
    while mono() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-2000:]
            raise RuntimeError(f"daemon exited with {proc.returncode}: {tail}")
        m = {}
        with contextlib.suppress(OSError, http.client.HTTPException):
            m = scrape(port)
        ts = m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", 0.0)
        if ts > last_seen:
            last_seen, syncs_seen = ts, syncs_seen + 1
            # Duration of the sync(s) since the previous scrape: at 50 Hz, the last one.
            last_dur, prev_sum = m.get(total, 0.0) - prev_sum, m.get(total, 0.0)
            gen, frontends = count_frontends(netns)
            if frontends >= n:
                done = ts
                break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"not all {n} frontends in the kernel within 900 s ({frontends})")
    mem = proc_mem_mb(proc.pid)
    m = scrape(port)
    times = log_times(log_path)
    res: dict[str, Any] = {
        "cold_start_s": done - t0,
        "frontends4": frontends,
        "generation": gen,
        "syncs_until_complete": syncs_seen,
        "elements": m.get("nftproxy_elements"),
        "chains": m.get("nftproxy_chains"),
        "full_sync_s": last_dur,  # the sync that completed the table
        "all_syncs_s": m.get(total),
        "rss_mb": mem.get("VmRSS"),
        "hwm_mb": mem.get("VmHWM"),
        "cpu_s": proc_cpu_s(proc.pid),
        "log_s": {k: v - t0 for k, v in times.items()},
    }
    # Phases: interpreter + imports + setup, the two LISTs (in parallel), waiting/compile+apply.
    lt = res["log_s"]
    if "serving" in lt and "listed_slices" in lt:
        lists_done = max(lt.get("listed_services", 0.0), lt["listed_slices"])
        sync_start = res["cold_start_s"] - res["full_sync_s"]
        res["phases_s"] = {
            "startup": lt["serving"],
            "list": lists_done - lt["serving"],
            "handoff": sync_start - lists_done,
            "full_sync": res["full_sync_s"],
        }
    return res


# --- event-to-kernel latency -----------------------------------------------------------


class WatchProbe:
    """A watch on all EndpointSlices from this process: when each new IP reaches a watcher.

    It splits event-to-kernel into apiserver (write + watch delivery) and daemon parts. It
    runs in this (busy, GIL-bound) process, so it is an upper bound for the watch part.
    """

    def __init__(self, api: Api) -> None:
        self.seen: dict[str, float] = {}
        self.error = ""
        path = "/apis/discovery.k8s.io/v1/endpointslices"
        status, out = api.request("GET", f"{path}?limit=1")
        rv = out["metadata"]["resourceVersion"] if status == 200 else "0"
        self.conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=api.ctx)
        self.conn.request(
            "GET",
            f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=false",
            headers={"Authorization": f"Bearer {api.token}", "Accept": "application/json"},
        )
        self.resp = self.conn.getresponse()
        self.thread = threading.Thread(target=self._read, name="watch-probe", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                t = mono()
                for ip in NEW_IP_RE.findall(line):
                    self.seen.setdefault(ip.decode(), t)
        except Exception as exc:  # stop() closes the socket under it
            self.error = repr(exc)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.sock and self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.thread.join(5)


class Monitor:
    """nftproxy.lab.element_monitor in the namespace: when each new IP is committed to a map.

    It reads the kernel's nftables notifications (no ruleset load, unlike `nft monitor`)
    and stamps each element with CLOCK_MONOTONIC as it arrives; the same clock as ours.
    """

    def __init__(self, netns: str) -> None:
        self.seen: dict[str, float] = {}
        self.lines = 0
        self.sample: list[str] = []
        self.ready = threading.Event()
        self.proc = start_proc(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-m",
                "nftproxy.lab.element_monitor",
                "--prefix",
                "10.200.",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self.thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("nftproxy.lab.element_monitor did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "ready":
                self.ready.set()
                continue
            self.lines += 1
            if len(self.sample) < 5:
                self.sample.append(line[:300])
            stamp, _, ip = line.partition(" ")
            with contextlib.suppress(ValueError):
                self.seen.setdefault(ip, float(stamp))

    def stop(self) -> None:
        stop_proc(self.proc, grace=5)
        self.thread.join(5)


def event_phase(
    api: Api,
    n: int,
    e: int,
    ips: list[list[str]],
    rate: float,
    seconds: float,
    netns: str,
    daemon: subprocess.Popen[Any],
    port: int,
    log: Any,
) -> dict[str, Any]:
    mon = Monitor(netns)
    probe = WatchProbe(api)
    # One canary change (not measured) proves the whole path before the measured ones.
    t_warm = mono()
    canary = ip4(NEW_IP_BASE + 60000)
    ips[0][0] = canary
    api.request("PUT", slice_path(0), slice_body(0, ips[0]))
    while canary not in mon.seen and mono() - t_warm < 30:
        time.sleep(0.01)
    if canary not in mon.seen:
        log(f"N={n}: the canary change did not reach the kernel within 30 s")
    time.sleep(0.5)
    warmup_s = mono() - t_warm
    total = int(rate * seconds)
    # Consecutive changes hit different Services; one Service recurs every n changes.
    stride = next(s for s in range(n // 3 or 1, n + 1) if _gcd(s, n) == 1) if n > 1 else 1
    sent: list[dict[str, Any]] = []
    lock = threading.Lock()
    busy: set[int] = set()
    cpu0, m0 = proc_cpu_s(daemon.pid), scrape(port)
    skipped = 0

    def change(c: int, i: int, new_ip: str, j: int) -> None:
        body = slice_body(i, ips[i])
        t_send = mono()
        status, out = api.request("PUT", slice_path(i), body)
        t_done = mono()
        with lock:
            busy.discard(i)
            sent.append({"c": c, "ip": new_ip, "send": t_send, "done": t_done, "status": status})
        if status != 200:
            log(f"PUT {slice_path(i)}: {status} {str(out)[:200]}")

    t_start = mono()
    with concurrent.futures.ThreadPoolExecutor(CHANGE_WORKERS) as pool:
        for c in range(total):
            due = t_start + c / rate
            delay = due - mono()
            if delay > 0:
                time.sleep(delay)
            i = (c * stride) % n
            with lock:
                if i in busy:  # still in flight from n changes ago: do not race it
                    skipped += 1
                    continue
                busy.add(i)
            j = (c // n) % e
            new_ip = ip4(NEW_IP_BASE + 1 + c)
            ips[i][j] = new_ip
            pool.submit(change, c, i, new_ip, j)
    t_sent = mono()
    # Stragglers: wait until everything arrived, or GRACE_S after the last PUT returned.
    wait_until = t_sent + GRACE_S
    while mono() < wait_until:
        with lock:
            pending = [s for s in sent if s["status"] == 200 and s["ip"] not in mon.seen]
        if not pending:
            break
        time.sleep(0.05)
    cpu1, m1 = proc_cpu_s(daemon.pid), scrape(port)
    mon.stop()
    probe.stop()

    ok = [s for s in sent if s["status"] == 200]
    lat = [(mon.seen[s["ip"]] - s["send"]) * 1e3 for s in ok if s["ip"] in mon.seen]
    after_ack = [(mon.seen[s["ip"]] - s["done"]) * 1e3 for s in ok if s["ip"] in mon.seen]
    put = [(s["done"] - s["send"]) * 1e3 for s in sent]
    watched = [s for s in ok if s["ip"] in probe.seen]
    to_watch = [(probe.seen[s["ip"]] - s["send"]) * 1e3 for s in watched]
    watch_to_kernel = [
        (mon.seen[s["ip"]] - probe.seen[s["ip"]]) * 1e3 for s in watched if s["ip"] in mon.seen
    ]
    first = min((s["send"] for s in sent), default=t_start)
    last = max((s["done"] for s in sent), default=t_sent)
    missing = [s["ip"] for s in ok if s["ip"] not in mon.seen]

    def delta(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    syncs = delta('nftproxy_syncs_total{mode="partial"}')
    sync_sum = delta("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum")
    mem = proc_mem_mb(daemon.pid)
    return {
        "planned": total,
        "sent": len(sent),
        "skipped_in_flight": skipped,
        "put_errors": len(sent) - len(ok),
        "achieved_rate": len(sent) / (last - first) if last > first else 0.0,
        "send_seconds": t_sent - t_start,
        "latency_ms": summary(lat),
        "after_put_response_ms": summary(after_ack),
        # PUT sent -> the event on a watch of this process; that event -> kernel.
        "send_to_watch_ms": summary(to_watch),
        "watch_to_kernel_ms": summary(watch_to_kernel),
        "watch_probe_error": probe.error,
        "put_ms": summary(put),
        "misses": len(missing),
        "missing_sample": missing[:5],
        "monitor_lines": mon.lines,
        "monitor_warmup_s": warmup_s,
        "monitor_sample": mon.sample,
        "daemon_cpu_s": cpu1 - cpu0,
        "daemon_cpu_share": (cpu1 - cpu0) / (last - first) if last > first else None,
        "partial_syncs": syncs,
        "full_syncs": delta('nftproxy_syncs_total{mode="full"}'),
        "changes_per_sync": len(ok) / syncs if syncs else None,
        "partial_sync_mean_ms": sync_sum / syncs * 1e3 if syncs else None,
        "rss_mb": mem.get("VmRSS"),
        "hwm_mb": mem.get("VmHWM"),
    }


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def check_kernel(netns: str, ips: list[list[str]], n: int) -> dict[str, Any]:
    """After the changes: every current endpoint IP of a sample of Services is in the map."""
    gen, text = list_map(netns, "endpoints4-tcp")
    sample = range(0, n, max(1, n // 200))
    want = [ip for i in sample for ip in ips[i]]
    found = sum(1 for ip in want if f": {ip} . 8080" in text)
    return {"checked": len(want), "found": found, "generation": gen}


# --- one size --------------------------------------------------------------------------


def one_size(n: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "services": n,
        "endpoints_per_service": args.endpoints,
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix=f"nftproxy-apibench-{n}-") as tmp:
        tmpdir = Path(tmp)
        t = mono()
        cp = kube.start_control_plane(tmpdir / "cp", watch_cache=True)
        daemon = None
        netns = f"nftproxy-apibench-{os.getpid()}-{n}"
        try:
            res["control_plane_start_s"] = mono() - t
            procs = {"kube-apiserver": cp._apiserver.proc, "etcd": cp._etcd.proc}
            api = Api(cp)
            log(f"N={n}: control plane up in {res['control_plane_start_s']:.1f}s; creating")
            res["create"], ips = create_objects(api, n, args.endpoints, log)
            log(
                f"N={n}: created {res['create']['objects']} objects in "
                f"{res['create']['seconds']:.1f}s ({res['create']['per_second']:.0f}/s)"
            )
            kubeconfig = cp.kubeconfig(tmpdir / "kubeconfig", cp.admin_token)
            netns_add(netns)
            # Others may commit while a long run goes on: the code this daemon runs.
            res["source_commit"] = git_head()
            port = free_port()
            log_path = tmpdir / "daemon.log"
            daemon, t0 = start_daemon(kubeconfig, netns, port, args.min_sync_period, log_path)
            res["cold"] = cold_start(daemon, t0, port, n, netns, log_path)
            c = res["cold"]
            log(
                f"N={n}: cold start {c['cold_start_s']:.2f}s ({c.get('phases_s')}), "
                f"{c['frontends4']} frontends, {c['elements']:.0f} elements, "
                f"RSS {c['rss_mb']:.0f} MB (HWM {c['hwm_mb']:.0f})"
            )
            time.sleep(1.0)  # let the first sync's aftermath settle
            ev = event_phase(
                api, n, args.endpoints, ips, args.rate, args.seconds, netns, daemon, port, log
            )
            res["events"] = ev
            log(
                f"N={n}: {ev['sent']} changes at {ev['achieved_rate']:.1f}/s; latency ms "
                f"p50 {ev['latency_ms']['p50']:.1f} p90 {ev['latency_ms']['p90']:.1f} "
                f"p99 {ev['latency_ms']['p99']:.1f} max {ev['latency_ms']['max']:.1f}; "
                f"misses {ev['misses']}; PUT p50 {ev['put_ms']['p50']:.1f} ms; daemon CPU "
                f"{(ev['daemon_cpu_share'] or 0) * 100:.0f}%; HWM {ev['hwm_mb']:.0f} MB"
            )
            res["kernel_check"] = check_kernel(netns, ips, n)
            res["other_cpu_s"] = {k: proc_cpu_s(p.pid) for k, p in procs.items() if p}
            res["other_rss_mb"] = {
                k: proc_mem_mb(p.pid).get("VmRSS") for k, p in procs.items() if p
            }
        finally:
            if daemon is not None:
                code = stop_proc(daemon)
                res["daemon_exit"] = code
                with contextlib.suppress(OSError):
                    text = (tmpdir / "daemon.log").read_text(errors="replace")
                    res["daemon_log_tail"] = text.splitlines()[-8:]
                    res["daemon_log_warnings"] = [
                        ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln
                    ][:10]
            cp.stop()
            netns_del(netns)
    res["loadavg_after"] = os.getloadavg()
    return res


# --- output ----------------------------------------------------------------------------


def git_head() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


def f(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _p(d: dict[str, float] | None) -> str:
    return "n/a" if not d or not d.get("count") else f"{f(d['p50'])} / {f(d['p99'])}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    a = report["args"]
    lines = [
        MARK_BEGIN,
        "## API benchmark (`bench/api.py`)",
        "",
        f"Run {report['date']}: `{report['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['nft']}, "
        f"Python {m['python']}, kube-apiserver/etcd {m['kubernetes']} on the same machine; "
        f"nftproxy at {m['source_commit']}"
        f"{' (with uncommitted changes in src/)' if m['source_modified'] else ''}.  ",
        f"Workload: N ClusterIP Services (one TCP port) with one EndpointSlice of "
        f"{a['endpoints']} ready endpoints each over 3 nodes (the daemon is one of them); "
        f"`nftproxy run --min-sync-period {a['min_sync_period']}` into a fresh network "
        f"namespace; then {a['rate']:g} endpoint changes/s for {a['seconds']:g} s "
        "(each PUT replaces one endpoint IP of a different Service).  ",
        f"Targets (30k x 10): cold start <= {TARGETS['cold_start_s']:g} s, event-to-kernel "
        f"p99 <= {TARGETS['event_p99_ms']:g} ms, daemon RSS <= {TARGETS['rss_mb']:g} MB.",
        "",
        "| N | create objects s (/s) | cold start s | = startup + LISTs + handoff + full sync "
        "s | elements | RSS after cold start MB (HWM) | changes sent (/s) | event-to-kernel "
        "ms p50 / p90 / p99 / max | of which PUT sent -> watch event here, p50 / p99 | "
        "watch event -> kernel p50 / p99 | misses | PUT ms p50 / p99 | changes per sync "
        "| daemon CPU during changes | RSS at end MB (HWM) | load avg |",
        "|---:|---:|---:|---|---:|---:|---:|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['services']} | error: {r['error'][:200]} |" + " |" * 14)
            continue
        c, ev = r["cold"], r.get("events")
        ph = c.get("phases_s") or {}
        phases = (
            f"{f(ph.get('startup'), 2)} + {f(ph.get('list'), 2)} + {f(ph.get('handoff'), 2)} "
            f"+ {f(ph.get('full_sync'), 2)}"
        )
        row = (
            f"| {r['services']} | {f(r['create']['seconds'])} ({r['create']['per_second']:.0f}) "
            f"| **{f(c['cold_start_s'], 2)}** | {phases} | {c['elements']:.0f} "
            f"(g{c.get('generation')}, {c.get('syncs_until_complete')} syncs) "
            f"| **{f(c['rss_mb'], 0)}** ({f(c['hwm_mb'], 0)}) "
        )
        if ev and ev.get("monitor_lines") == 0:
            put = ev["put_ms"]
            row += (
                f"| {ev['sent']} ({ev['achieved_rate']:.0f}) | not measured: the element "
                "monitor never reported (see notes) "
                f"| {_p(ev.get('send_to_watch_ms'))} | n/a | n/a "
                f"| {f(put['p50'])} / {f(put['p99'])} | {f(ev['changes_per_sync'], 2)} "
                f"| {f((ev['daemon_cpu_share'] or 0) * 100, 0)}% "
                f"| {f(ev['rss_mb'], 0)} ({f(ev['hwm_mb'], 0)}) "
            )
        elif ev:
            lat, put = ev["latency_ms"], ev["put_ms"]
            row += (
                f"| {ev['sent']} ({ev['achieved_rate']:.0f}) "
                f"| {f(lat['p50'])} / {f(lat['p90'])} / **{f(lat['p99'])}** / {f(lat['max'])} "
                f"| {_p(ev.get('send_to_watch_ms'))} | {_p(ev.get('watch_to_kernel_ms'))} "
                f"| {ev['misses']} | {f(put['p50'])} / {f(put['p99'])} "
                f"| {f(ev['changes_per_sync'], 2)} "
                f"| {f((ev['daemon_cpu_share'] or 0) * 100, 0)}% "
                f"| {f(ev['rss_mb'], 0)} ({f(ev['hwm_mb'], 0)}) "
            )
        else:
            row += "| | | | | | | | | "
        row += f"| {f(r['loadavg_before'][0])} |"
        if r.get("source_commit") and r["source_commit"] != m["source_commit"]:
            row += f" daemon at {r['source_commit']}"
        lines.append(row)
    stopped = report.get("interrupted")
    if stopped:
        lines += [
            "",
            f"The run was interrupted at N={stopped.get('at_size')} ({stopped.get('reason')}); "
            "sizes without a row were not measured.",
        ]
    if any((r.get("events") or {}).get("monitor_lines") == 0 for r in report["results"]):
        lines += [
            "",
            "Not measured: the element monitor saw none of the new IPs (see "
            "`monitor_sample` and `kernel_check` in the JSON).",
        ]
    lines += [
        "",
        "Cold start = `nftproxy run` process start -> end of its first full sync (the "
        "daemon's `kubeproxy_sync_proxy_rules_last_timestamp_seconds`), checked against the "
        "number of elements in the frontends map. Startup = Python start, imports and "
        "setup until the daemon logs `serving`; LISTs = until both reflectors listed (paged, "
        "500 per page, in parallel); handoff = from there to the start of the sync; full "
        "sync = the duration of the sync that completed the table (compile + apply, "
        "whatever path the daemon took; from `kubeproxy_sync_proxy_rules_duration_seconds`)."
        " The elements column says which generation of maps holds them and how many syncs "
        "the daemon made until then (an early sync of the empty skeleton counts). "
        "Event-to-kernel = PUT sent -> the kernel's notification of the new IP's map element "
        "in the namespace (`nftproxy.lab.element_monitor` subscribed to nftables' netlink "
        "group, stamped on arrival), so it includes "
        "the apiserver and etcd write, the watch, the daemon and the kernel. The split next "
        "to it uses a second watch on all EndpointSlices held by this benchmark (same "
        "apiserver; a busy Python process, so an upper bound for the apiserver part). "
        f"Misses = new IPs not seen within {GRACE_S:g} s after the last change. Daemon CPU = "
        "its user + system time over the change phase's wall time (100% = one core). The "
        "apiserver, etcd, this benchmark's HTTP clients and the daemon share the 2 CPUs.",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,30000", help="comma list of Service counts")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    p.add_argument("--rate", type=float, default=100.0, help="endpoint changes per second")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the change phase")
    p.add_argument("--min-sync-period", type=float, default=0.0, help="the daemon's (default 0)")
    p.add_argument("--quick", action="store_true", help="N=1000 only, 15 s of changes")
    p.add_argument("--out", help="JSON output (default bench/results/api-<date>.json)")
    p.add_argument(
        "--markdown",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown file whose api section is replaced ('' to skip)",
    )
    p.add_argument("--render", metavar="JSON", help="only rewrite --markdown from a saved run")
    args = p.parse_args(argv)
    if args.render:
        write_markdown(
            Path(args.markdown),
            markdown(json.loads(Path(args.render).read_text())),
            MARK_BEGIN,
            MARK_END,
        )
        return 0
    if args.quick:
        args.sizes, args.seconds = "1000", 15.0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if os.geteuid() != 0:
        print("bench/api.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    try:
        kube.find_binaries()  # fail early when kube-apiserver/etcd are not built
    except kube.BinariesMissing as exc:
        print(f"bench/api.py {exc}", file=sys.stderr)
        return 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    start = mono()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"api-{stamp}.json"
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(kubernetes=kube.kubernetes_version()),
        "args": vars(args),
        "targets": TARGETS,
        "results": [],
    }

    def log(msg: str) -> None:
        print(f"[{mono() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    code = 0
    try:
        for n in sizes:
            try:
                report["results"].append(one_size(n, args, log))
            except (RuntimeError, OSError, kube.ControlPlaneError) as exc:
                log(f"N={n}: failed: {exc}")
                report["results"].append({"services": n, "error": str(exc)})
                code = 2
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); cleaning up")
        done = {r["services"] for r in report["results"]}
        report["interrupted"] = {
            "at_size": next((n for n in sizes if n not in done), None),
            "reason": str(exc) or "Ctrl-C",
        }
        code = 130
    finally:
        cleanup_all()
        report["wall_s"] = mono() - start
        save_report(report, out, args.markdown, markdown, (MARK_BEGIN, MARK_END), log)
    return code


if __name__ == "__main__":
    sys.exit(main())
