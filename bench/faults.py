#!/usr/bin/env python3
"""Fault campaign: `nftproxy run --manifests` under churn, crashes, foreign edits and
hostile files, with traffic flowing the whole time.

    python bench/faults.py [--updates 1000] [--restarts 25] [--rounds 3] [--fuzz 500]
                           [--quick] [--out bench/results/faults-<date>.json]

Needs root. It builds a lab (2 nodes x 3 pods with echo servers, an outside client; all
network namespaces of its own, removed again whatever happens), runs the daemon in node-1's
namespace on a directory of one manifest per Service, and keeps two clients opening fresh
TCP connections: from outside to node-1's NodePorts, and from a pod on node-1 to the
ClusterIPs. Every Service keeps at least one endpoint, and every pod keeps serving, so no
connection may fail except while the table is broken by a foreign edit (from the edit until
`nftproxy plan` says `# noop` again, plus half a second: that is the repair window).

Phases, in order:
  updates   --updates endpoint changes, one file rewritten at a time
  restarts  --restarts kill -9 of the daemon, each restarted at once, with updates between
  foreign   --rounds of each foreign edit (delete or flush the table, flush a chain, delete,
            change or add single elements, flush the endpoint map): how long until repaired
  hostile   files that once crashed, froze or exhausted the daemon, plus --fuzz mutated
            manifests (random fields replaced, removed or retyped), while updates go on

Reported: connections tried and failed (outside and inside repair windows), each repair's
time, the daemon's exits other than our kill -9 (crashes), its peak resident memory and
threads per phase, and whether /livez answered every probe.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import machine_info

from nftproxy.lab import Lab, default_topology, run_in_netns
from nftproxy.lab.client import attempt

ROOT = Path(__file__).resolve().parent.parent
ECHO_PORT = 8080
HEALTHZ = 10256
SERVICES = 10
NODE = "node-1"


# --- manifests ---------------------------------------------------------------------------


def service_doc(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": "shop"},
        "spec": {
            "type": "NodePort",
            "clusterIP": f"10.96.1.{i + 1}",
            "ports": [{"name": "http", "port": 80, "nodePort": 30100 + i}],
        },
    }


def slice_doc(i: int, addresses: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": ECHO_PORT}],
        "endpoints": [{"addresses": [ip], "nodeName": node} for ip, node in addresses],
    }


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


HOSTILE = {
    "brackets.yaml": "[" * 1200 + "]" * 1200,
    "brackets.json": "[" * 200_000 + "]" * 200_000,
    "blocks.yaml": "".join("  " * d + f"k{d}:\n" for d in range(3000)),
    "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
    )
    + "kind: List\napiVersion: v1\nitems: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
    "binary.yaml": "\x00\x01\x02\xff" * 1000,
    "big.yaml": "# padding\n" * 300_000,  # 3 MB: over the daemon's --max-file-size 2M
}


def fuzzed(rng: random.Random, i: int) -> dict[str, Any]:
    """A valid-looking object of namespace zz-fuzz (which sorts after shop, so it never wins
    a claim), with one to four random fields replaced, removed or retyped."""
    doc = copy.deepcopy(rng.choice([service_doc(i % 50), slice_doc(i % 50, [("10.244.9.9", "x")])]))
    doc["metadata"]["namespace"] = "zz-fuzz"
    doc["metadata"]["name"] = f"f{i}"
    junk: list[Any] = [
        None, "", -1, 0, 70000, 2**40, "10.0.0.999", "::ffff:1.2.3.4", True, [], {}, [[[]]],
        "x" * 5000, {"a": [1, {"b": None}]}, "IPv5", "SCTP", 1.5, "eighty",
    ]  # fmt: skip
    for _ in range(rng.randint(1, 4)):
        node: Any = doc
        path: list[Any] = []
        while isinstance(node, dict | list) and node and rng.random() < 0.7:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append(key)
            parent, node = node, node[key]
        if not path:
            continue
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(junk))  # no aliases in the dump
    return doc


# --- observation ---------------------------------------------------------------------------


@dataclass
class Window:
    kind: str
    start: float
    end: float = float("inf")


@dataclass
class Observed:
    attempts: list[tuple[float, float, str, bool, str]] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    livez: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[float, str, int, int]] = field(
        default_factory=list
    )  # t, phase, KiB, threads
    crashes: list[str] = field(default_factory=list)
    phase: str = "start"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: tuple[float, float, str, bool, str]) -> None:
        with self.lock:
            self.attempts.append(entry)


class Daemon:
    """nftproxy run in node-1's namespace; our own kill -9 is not a crash."""

    def __init__(self, lab: Lab, manifests: Path, observed: Observed) -> None:
        self.lab, self.manifests, self.observed = lab, manifests, observed
        self.started: Any = None
        self.killed = False
        self.lock = threading.RLock()

    def start(self) -> None:
        with self.lock:
            self._start()

    def _start(self) -> None:
        node = self.lab.topology.node(NODE)
        self.killed = False
        self.started = self.lab.spawn(
            NODE,
            [
                sys.executable, "-m", "nftproxy", "run", "--manifests", str(self.manifests),
                "--node-name", NODE, "--node-ip", node.ip4, "--cluster-cidr", "10.244.0.0/16",
                "--min-sync-period", "0.1", "--poll-interval", "0.1",
                "--healthz-bind-address", f"127.0.0.1:{HEALTHZ}", "--metrics-bind-address=",
                "--max-file-size", "2M",
            ],
            log_name="nftproxy",
        )  # fmt: skip

    def kill(self) -> None:
        with self.lock:
            self.killed = True
            os.kill(self.started.proc.pid, signal.SIGKILL)
            self.started.proc.wait()
            self.lab.stop(self.started)

    def check(self) -> None:
        """A daemon that exited without our kill crashed: count it and start another."""
        with self.lock:
            proc = self.started.proc if self.started is not None else None
            if proc is not None and not self.killed and proc.poll() is not None:
                self.observed.crashes.append(f"exit {proc.returncode} in {self.observed.phase}")
                self._start()

    def status(self) -> tuple[int, int] | None:
        try:
            text = Path(f"/proc/{self.started.proc.pid}/status").read_text()
        except OSError:
            return None
        rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
        threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
        return rss, threads


def traffic(
    lab: Lab, observed: Observed, stop: threading.Event, who: str, targets: list[tuple[str, int]]
) -> None:
    """Fresh TCP connections, one after another, to random targets, from `who`."""
    rng = random.Random(who)

    def loop() -> None:
        while not stop.is_set():
            host, port = rng.choice(targets)
            start = time.monotonic()
            kind, detail = attempt(host, port, "tcp", 1.0, None)
            observed.add((start, time.monotonic(), f"{host}:{port}", kind == "reply", detail))
            time.sleep(0.005)

    run_in_netns(lab.ns_path(who), loop)


def watch(lab: Lab, daemon: Daemon, observed: Observed, stop: threading.Event) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe() -> str:
        try:
            with opener.open(f"http://127.0.0.1:{HEALTHZ}/livez", timeout=2) as answer:
                return str(answer.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)
        except OSError:
            return "down" if daemon.killed else "no answer"

    def loop() -> None:
        while not stop.wait(1.0):
            daemon.check()
            observed.livez[f"{observed.phase}: {probe()}"] += 1
            st = daemon.status()
            if st is not None:
                observed.samples.append((time.monotonic(), observed.phase, *st))

    run_in_netns(lab.ns_path(NODE), loop)


# --- the campaign --------------------------------------------------------------------------


class Campaign:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab, self.args = lab, args
        self.rng = random.Random(args.seed)
        self.workdir = Path(lab.workdir)
        self.manifests = self.workdir / "manifests"
        self.manifests.mkdir()
        self.observed = Observed()
        self.daemon = Daemon(lab, self.manifests, self.observed)
        self.pods = [(p.ip4, p.node) for p in lab.topology.pods]
        self.repairs: list[dict[str, Any]] = []
        self.updates = 0
        self.last_plan = ""

    def update(self, i: int | None = None) -> None:
        i = self.rng.randrange(SERVICES) if i is None else i
        chosen = self.rng.sample(self.pods, self.rng.randint(1, len(self.pods)))
        text = yaml.safe_dump_all([service_doc(i), slice_doc(i, chosen)])
        write_atomically(self.manifests / f"svc-{i}.yaml", text)
        self.updates += 1

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(NODE, ["nft", *args], check=check)

    def plan_is_noop(self) -> bool:
        """`nftproxy plan` of the readable inputs says `# noop` (the hostile files are left
        out: plan refuses unreadable input; invalid fuzzed objects make it keep, as the
        daemon does)."""
        node = self.lab.topology.node(NODE)
        inputs = sorted(str(p) for p in self.manifests.glob("svc-*.yaml"))
        if (self.manifests / "zz-fuzz").is_dir():
            inputs.append(str(self.manifests / "zz-fuzz"))
        proc = self.lab.exec(
            NODE,
            [sys.executable, "-m", "nftproxy", "plan", *inputs, "--netns",
             str(self.lab.ns_path(NODE)), "--node-name", NODE, "--node-ip", node.ip4,
             "--cluster-cidr", "10.244.0.0/16"],
            check=False,
        )  # fmt: skip
        self.last_plan = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.returncode in (0, 3) and proc.stdout.startswith("# noop")

    def wait_in_sync(self, timeout: float = 30.0) -> float:
        start = time.monotonic()
        while not self.plan_is_noop():
            if time.monotonic() - start > timeout:
                raise RuntimeError(
                    f"the table was not in sync within {timeout} s; the last plan:\n"
                    f"{self.last_plan}"
                )
            time.sleep(0.1)
        return time.monotonic() - start

    def generation(self) -> str:
        listing = self.nft("list", "chains", "inet").stdout
        found = re.findall(r"chain (g\d+)-services4", listing)
        return found[0] if found else "g1"

    def run(self) -> dict[str, Any]:
        args = self.args
        for i in range(SERVICES):
            self.update(i)
        self.daemon.start()
        self.wait_in_sync()
        node = self.lab.topology.node(NODE)
        stop = threading.Event()
        pod = self.lab.topology.pods_on(NODE)[0].name
        node_ports = [(node.ip4, 30100 + i) for i in range(SERVICES)]
        cluster_ips = [(f"10.96.1.{i + 1}", 80) for i in range(SERVICES)]
        threads = [
            threading.Thread(
                target=traffic, args=(self.lab, self.observed, stop, "ext", node_ports)
            ),
            threading.Thread(
                target=traffic, args=(self.lab, self.observed, stop, pod, cluster_ips)
            ),
            threading.Thread(target=watch, args=(self.lab, self.daemon, self.observed, stop)),
        ]
        for t in threads:
            t.start()
        started = time.monotonic()
        try:
            self.phase_updates(args.updates)
            self.phase_restarts(args.restarts)
            self.phase_foreign(args.rounds)
            self.phase_hostile(args.fuzz)
            self.observed.phase = "end"
            self.wait_in_sync()
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        return self.report(time.monotonic() - started)

    def phase_updates(self, n: int) -> None:
        self.observed.phase = "updates"
        for _ in range(n):
            self.update()
            time.sleep(self.rng.uniform(0.0, 0.1))
        self.wait_in_sync()

    def phase_restarts(self, n: int) -> None:
        self.observed.phase = "restarts"
        for _ in range(n):
            time.sleep(self.rng.uniform(0.3, 1.5))
            self.daemon.kill()
            for _ in range(self.rng.randint(0, 3)):  # changes while no daemon runs
                self.update()
            time.sleep(self.rng.uniform(0.0, 1.0))
            self.daemon.start()
        self.wait_in_sync()

    def phase_foreign(self, rounds: int) -> None:
        self.observed.phase = "foreign"
        table = "inet nftproxy"
        edits = {
            "delete table": f"delete table {table}",
            "flush table": f"flush table {table}",
            "flush chain": f"flush chain {table} {{g}}-services4",
            "flush endpoint map": f"flush map {table} {{g}}-endpoints4-tcp",
            "delete a NodePort": f"delete element {table} {{g}}-nodeports4 {{{{ tcp . 30103 }}}}",
            "delete a ClusterIP": (
                f"delete element {table} {{g}}-frontends4 {{{{ 10.96.1.4 . tcp . 80 }}}}"
            ),
            "delete a bucket": (
                f"delete element {table} {{g}}-endpoints4-tcp {{{{ 10.96.1.5 . 80 . 0 }}}}"
            ),
            "change a frontend": (
                f"delete element {table} {{g}}-frontends4 {{{{ 10.96.1.6 . tcp . 80 }}}}\n"
                f"add element {table} {{g}}-frontends4 {{{{ 10.96.1.6 . tcp . 80 : drop }}}}"
            ),
            "add a frontend": (
                f"add element {table} {{g}}-frontends4 {{{{ 10.96.1.200 . tcp . 80 : drop }}}}"
            ),
        }
        for _ in range(rounds):
            for kind, script in edits.items():
                time.sleep(1.5)
                window = Window(kind, time.monotonic())
                text = script.format(g=self.generation()) + "\n"
                self.lab.exec(NODE, ["nft", "-f", "-"], input=text)
                self.observed.windows.append(window)
                took = self.wait_in_sync()
                window.end = time.monotonic() + 0.5
                self.repairs.append({"edit": kind, "repaired_s": round(took, 3)})

    def phase_hostile(self, fuzz: int) -> None:
        self.observed.phase = "hostile"
        for name, text in HOSTILE.items():
            (self.manifests / name).write_text(text)
        os.mkfifo(self.manifests / "fifo.yaml")
        (self.manifests / "zero.yaml").symlink_to("/dev/zero")
        (self.manifests / "dangling.yaml").symlink_to(self.workdir / "nowhere.yaml")
        (self.manifests / "loop.yaml").symlink_to(self.manifests / "loop.yaml")
        fuzz_dir = self.manifests / "zz-fuzz"
        fuzz_dir.mkdir()
        for i in range(fuzz):
            doc = fuzzed(self.rng, i)
            (fuzz_dir / f"f{i}.yaml").write_text(yaml.safe_dump(doc))
            if i % 10 == 0:
                self.update()
            time.sleep(0.02)
        time.sleep(2.0)
        for _ in range(50):  # still serving: changes are picked up
            self.update()
            time.sleep(0.05)
        self.wait_in_sync(timeout=60)

    def report(self, seconds: float) -> dict[str, Any]:
        obs = self.observed
        inside = outside = 0
        failures: Counter[str] = Counter()
        for start, end, target, ok, detail in obs.attempts:
            if ok:
                continue
            if any(w.start <= end and start <= w.end for w in obs.windows):
                inside += 1
            else:
                outside += 1
                failures[f"{target} {detail}"] += 1
        phases: dict[str, dict[str, int]] = {}
        for _, phase, rss, threads in obs.samples:
            p = phases.setdefault(phase, {"max_rss_kib": 0, "max_threads": 0})
            p["max_rss_kib"] = max(p["max_rss_kib"], rss)
            p["max_threads"] = max(p["max_threads"], threads)
        by_edit: dict[str, list[float]] = {}
        for r in self.repairs:
            by_edit.setdefault(r["edit"], []).append(r["repaired_s"])
        logs = [f.read_text(errors="replace") for f in sorted(self.workdir.glob("nftproxy*.log"))]
        return {
            "seconds": round(seconds, 1),
            "updates": self.updates,
            "restarts": self.args.restarts,
            "fuzzed_files": self.args.fuzz,
            "connections": len(obs.attempts),
            "failed_outside_windows": outside,
            "failed_inside_windows": inside,
            "failures_outside": dict(failures.most_common(20)),
            "repair_s": {
                k: {"max": max(v), "median": sorted(v)[len(v) // 2]} for k, v in by_edit.items()
            },
            "crashes": obs.crashes,
            "livez": dict(obs.livez),
            "daemon_per_phase": phases,
            "daemon_tracebacks": sum(text.count("Traceback") for text in logs),
            "daemon_errors": sum(text.count(" ERROR ") for text in logs),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--restarts", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every foreign edit")
    p.add_argument("--fuzz", type=int, default=500, help="mutated manifests in the hostile phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="100 updates, 5 restarts, 1 round, 50 fuzzed"
    )
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.quick:
        args.updates, args.restarts, args.rounds, args.fuzz = 100, 5, 1, 50
    if os.geteuid() != 0:
        raise SystemExit("bench/faults.py needs root (it builds network namespaces)")
    machine = machine_info()  # before the run: the source it measures
    with Lab.create(default_topology(nodes=2, pods_per_node=3)) as lab:
        lab.start_echo_all(tcp=(ECHO_PORT,), udp=(), max_seconds=3600)
        for node in lab.topology.nodes:
            lab.exec(node, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
        result = Campaign(lab, args).run()
        result["daemon_log_tail"] = sorted(lab.workdir.glob("nftproxy*.log"))[-1].read_text(
            errors="replace"
        )[-4000:]
    report = {"machine": machine, "args": vars(args), "result": result}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"faults-{stamp}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "daemon_log_tail"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
