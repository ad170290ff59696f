"""`nftproxy demo` (README, "Install and run"): a lab of network namespaces, `nftproxy run
--manifests` in each node, real traffic and a live table of connections per endpoint, with a
Service scaled up and down midway. Everything it created is removed on exit, Ctrl-C or
SIGTERM."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from nftproxy.lab import Lab, Pod, default_topology
from nftproxy.lab.netns import NETNS_DIR

__all__ = [
    "API_VIP",
    "HTTP",
    "DemoUnavailable",
    "preflight",
    "redraw",
    "run",
]

HTTP = 8080
WEB_VIP, WEB_LB, WEB_NODEPORT = "10.96.0.10", "198.51.100.10", 30080
API_VIP = "10.96.0.20"


class DemoUnavailable(Exception):
    """This machine lacks something the demo needs; the message names it."""


def preflight() -> None:
    if os.geteuid() != 0:
        raise DemoUnavailable("the demo builds network namespaces and needs root: run it with sudo")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise DemoUnavailable(f"the `{tool}` command is missing: apt-get install {package}")
    if ctypes.util.find_library("nftables") is None and shutil.which("nft") is None:
        raise DemoUnavailable("libnftables is missing: apt-get install libnftables1")
    if not Path("/proc/sys/net/netfilter").exists() and not Path("/proc/net/nf_conntrack").exists():
        # Not fatal on every kernel, but worth saying before a confusing failure.
        print("note: netfilter conntrack does not appear loaded", file=sys.stderr)


def _service(name: str, vip: str, *, lb: str | None = None, node_port: int | None = None) -> str:
    kind = "LoadBalancer" if lb else "ClusterIP"
    np = f", nodePort: {node_port}" if node_port else ""
    status = f"\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {lb}}}]" if lb else ""
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n"
        f"spec:\n  type: {kind}\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n"
        f"  ports: [{{name: http, port: 80, targetPort: {HTTP}, protocol: TCP{np}}}]{status}\n"
    )


def _slice(name: str, pods: Sequence[Pod]) -> str:
    eps = "".join(
        f"- addresses: [{p.ip4}]\n  nodeName: {p.node}\n  conditions: {{ready: true}}\n"
        for p in pods
    )
    return (
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata:\n  name: {name}-1\n  namespace: shop\n"
        f"  labels: {{kubernetes.io/service-name: {name}}}\n"
        f"addressType: IPv4\nports: [{{name: http, port: {HTTP}, protocol: TCP}}]\n"
        f"endpoints:\n{eps or '[]'}"
    )


def _write(path: Path, text: str) -> None:
    # Write then rename, so the daemon never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


@dataclass
class _Stream:
    """One kind of traffic the demo sends and counts."""

    title: str
    client: str
    host: str
    port: int
    per_tick: int
    last: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    failed: int = 0


def _render(
    streams: Sequence[_Stream], events: Sequence[str], elapsed: float, duration: float
) -> str:
    lines = [
        f"nftproxy demo: {elapsed:4.0f}s / {duration:.0f}s   (Ctrl-C ends it and cleans up)",
        "",
    ]
    for s in streams:
        lines.append(f"{s.title}   [{s.client} -> {s.host}:{s.port}]")
        names = sorted(set(s.total) | set(s.last), key=lambda n: int(n.split("-")[-1]))
        peak = max(s.last.values(), default=1)
        for name in names:
            n = s.last.get(name, 0)
            bar = "#" * round(30 * n / peak) if peak else ""
            lines.append(f"  {name:7} {n:4d}/s  {bar:30}  total {s.total[name]:6d}")
        if s.failed:
            lines.append(f"  failed connections: {s.failed}")
        lines.append("")
    lines.append("events:")
    lines.extend(f"  {e}" for e in events[-6:])
    return "\n".join(lines)


@dataclass
class _Built:
    """What the lab holds, as last seen: what an interrupted demo reports removing."""

    prefix: str = ""
    namespaces: list[str] = field(default_factory=list)
    processes: int = 0

    def note(self, lab: Lab) -> None:
        self.prefix, self.namespaces = lab.prefix, lab.namespaces
        self.processes = len(lab.processes)

    def report(self) -> str:
        if not self.prefix:
            return "interrupted while building the lab; what it had built is removed"
        left = [ns for ns in self.namespaces if (NETNS_DIR / ns).exists()]
        if left:
            return (
                f"interrupted: could not remove {', '.join(left)} (`ip netns del NAME` removes one)"
            )
        return (
            f"interrupted: removed lab {self.prefix}: the {self.processes} processes it "
            f"started and its {len(self.namespaces)} network namespaces "
            f"({', '.join(self.namespaces)}); nothing outside them was touched"
        )


def run(duration: float = 45.0, *, out: TextIO = sys.stdout, live: bool | None = None) -> int:
    preflight()
    built = _Built()
    try:
        return _run(duration, out, out.isatty() if live is None else live, built)
    except KeyboardInterrupt:
        # The lab is gone by now: its signal handler or its `with` removed it.
        print(f"\n{built.report()}", file=out, flush=True)
        raise


def _run(duration: float, out: TextIO, live: bool, built: _Built) -> int:
    screen = _Screen(out, live)
    with Lab.create(default_topology(nodes=2, pods_per_node=2)) as lab:
        built.note(lab)
        manifests = lab.workdir / "manifests"
        manifests.mkdir()
        pods = list(lab.topology.pods)
        lab.start_echo_all(tcp=(HTTP,), udp=())
        _write(manifests / "web.yaml", _service("web", WEB_VIP, lb=WEB_LB, node_port=WEB_NODEPORT))
        _write(manifests / "web-endpoints.yaml", _slice("web", pods))
        _write(manifests / "api.yaml", _service("api", API_VIP))
        _write(manifests / "api-endpoints.yaml", _slice("api", [pods[0], pods[-1]]))
        cidrs = [f"--cluster-cidr={c}" for c in lab.topology.cluster_cidrs]
        for node in lab.topology.nodes:
            lab.spawn(
                node,
                [
                    sys.executable,
                    "-m",
                    "nftproxy",
                    "run",
                    "--manifests",
                    str(manifests),
                    "--node-name",
                    node.name,
                    "--node-ip",
                    node.ip4,
                    "--node-ip",
                    node.ip6,
                    *cidrs,
                    "--min-sync-period",
                    "0.2",
                    "--poll-interval",
                    "0.2",
                ],
                log_name=f"nftproxy-{node.name}",
            )
        built.note(lab)
        n2 = lab.topology.nodes[-1]
        streams = [
            _Stream("web via its LoadBalancer IP (outside client)", "ext", WEB_LB, 80, 60),
            _Stream("web via NodePort on node-2 (outside client)", "ext", n2.ip4, WEB_NODEPORT, 40),
            _Stream("api via ClusterIP (from pod-1)", pods[0].name, API_VIP, 80, 30),
        ]
        events = [
            f"lab {lab.prefix}: nodes {', '.join(n.name for n in lab.topology.nodes)}; "
            f"web has {len(pods)} endpoints, api 2"
        ]
        _wait_ready(lab, streams[0], events)
        scaled_up = scaled_down = False
        extra: list[Pod] = []
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < duration:
            if not scaled_up and elapsed >= duration / 3:
                scaled_up = True
                extra = [lab.add_pod(n.name) for n in lab.topology.nodes]
                for p in extra:
                    lab.start_echo(p, tcp=(HTTP,), udp=())
                built.note(lab)
                _write(manifests / "web-endpoints.yaml", _slice("web", [*pods, *extra]))
                events.append(
                    f"{elapsed:4.0f}s scaled web up: +{', '.join(p.name for p in extra)}"
                    f" ({len(pods) + len(extra)} endpoints)"
                )
            elif not scaled_down and elapsed >= 2 * duration / 3:
                scaled_down = True
                keep = [pods[0], extra[-1]] if extra else pods[:2]
                _write(manifests / "web-endpoints.yaml", _slice("web", keep))
                events.append(
                    f"{elapsed:4.0f}s scaled web down to {', '.join(p.name for p in keep)}"
                )
            tick = time.monotonic()
            for s in streams:
                r = lab.connect(
                    s.client, s.host, s.port, count=s.per_tick, timeout=2.0, in_process=True
                )
                s.last = r.endpoints()
                s.total.update(s.last)
                s.failed += r.failures
            screen.show(_render(streams, events, elapsed, duration))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        failed = sum(s.failed for s in streams)
        sent = sum(sum(s.total.values()) for s in streams) + failed
        print(f"\n{sent} connections, {failed} failed. Cleaning up lab {lab.prefix} ...", file=out)
    print("done: every namespace and process the demo started is gone.", file=out)
    return 0 if failed == 0 else 1


def _wait_ready(lab: Lab, s: _Stream, events: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.connect(s.client, s.host, s.port, count=1, timeout=0.5, in_process=True).ok:
            events.append("nftproxy synced both nodes; traffic flows")
            return
        time.sleep(0.2)
    logs = "\n".join(p.read_text()[-2000:] for p in lab.workdir.glob("nftproxy-*.log"))
    raise DemoUnavailable(f"the nodes did not start forwarding within {timeout:.0f}s:\n{logs}")


class _Screen:
    """Shows each second's table: in place on a terminal, appended elsewhere."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self.height = 0  # lines of the table shown last

    def show(self, text: str) -> None:
        if self.live:
            self.out.write(redraw(self.height, text))
            self.height = text.count("\n") + 1
        else:
            self.out.write(text + "\n\n")
        self.out.flush()


def redraw(height: int, text: str) -> str:
    """What replaces the `height` lines above the cursor with `text`: up to their first
    line, each new line clearing what the old one had to its right, and below the new
    text whatever a taller old one left. Clearing the whole screen instead would push
    a copy of it into many terminals' scrollback every second."""
    up = f"\r\x1b[{height}A" if height else ""
    return up + "".join(f"{line}\x1b[K\n" for line in text.split("\n")) + "\x1b[J"
