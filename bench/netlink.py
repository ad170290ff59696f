#!/usr/bin/env python3
"""Element write paths: netlink batches against libnftables and `nft -f` at N elements.

    python bench/netlink.py [--elements 100000,785000] [--out bench/results/netlink-<date>.json]

For each N, the same N endpoint-map elements (nftproxy's shape: 25 per frontend, distinct
VIPs and backends) go into an empty copy of the skeleton table three ways, each in a fresh
network namespace: ElementWriter (encode in Python, then send: the kernel's work happens
inside send), LibNftables (render nft text, then nft_run_cmd_from_buffer) and `nft -f`
(the text already rendered). Prints wall, user and system seconds of each step.

Needs root. The namespaces `nftproxy-nlbench-<pid>-<n>-<path>` are deleted after each
measurement, also after an error, Ctrl-C or SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import machine_info, netns_add, netns_del, netns_del_all, on_signal

from nftproxy.config import NodeConfig
from nftproxy.kernel.encoding import ElementType, element_type
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.kernel.netlink import ElementWriter
from nftproxy.ruleset.compile import Names, skeleton_sets
from nftproxy.ruleset.schema import SetDef, SetField, typeof_addr, typeof_numgen, typeof_port
from nftproxy.ruleset.transaction import AddElements, AddSet, AddTable, DeleteElements

ROOT = Path(__file__).resolve().parent.parent
NODE = NodeConfig(cluster_cidrs=("10.244.0.0/16", "fd00:244::/64"))
# The endpoint map keyed by protocol (ipv4 . proto . port . bucket), next to the skeleton's.
ENDPOINTS = SetDef(
    "t-endpoints4",
    (typeof_addr(4), SetField("inet_proto", "meta l4proto"), typeof_port("tcp"), typeof_numgen(2)),
    (typeof_addr(4), typeof_port("tcp")),
)
SETS = {**skeleton_sets(Names(), NODE), ENDPOINTS.name: ENDPOINTS}
TYPES: dict[str, ElementType] = {
    name: t for name, s in SETS.items() if (t := element_type(s)) is not None
}

Ops = Sequence[AddElements | DeleteElements]
Row = tuple[str, float, float, float]  # step, wall s, user s, sys s


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, "nft", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr[:500]}")
    return proc.stdout


# --- what is written -------------------------------------------------------------------


def skeleton_text() -> str:
    lines = [*AddTable().render()]
    for sdef in SETS.values():
        lines += AddSet(sdef).render()
    return "\n".join(lines) + "\n"


def ops_text(ops: Ops) -> str:
    return "".join(line + "\n" for op in ops for line in op.render())


def bench_ops(n: int) -> list[AddElements | DeleteElements]:
    """nftproxy's shape: n endpoint elements, 25 per frontend, distinct VIPs and backends."""
    items = []
    for i in range(n):
        f = i // 25
        vip = f"10.{96 + (f >> 16)}.{f >> 8 & 255}.{f & 255}"
        proto = ("tcp", "udp", "sctp")[f % 3]
        backend = f"10.{128 + (i >> 16 & 63)}.{i >> 8 & 255}.{i & 255}"
        items.append(((vip, proto, 80 + f % 1000, i % 25), (backend, 8080)))
    return [AddElements(ENDPOINTS.name, tuple(items))]


def _cpu() -> tuple[float, float]:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def _row(step: str, t0: float, c0: tuple[float, float], t1: float, c1: tuple[float, float]) -> Row:
    return (step, t1 - t0, c1[0] - c0[0], c1[1] - c0[1])


# --- one size --------------------------------------------------------------------------


def one_size(n: int) -> dict[str, Any]:
    skeleton = skeleton_text()
    ops = bench_ops(n)
    rows: list[Row] = []
    prefix = f"nftproxy-nlbench-{os.getpid()}-{n}"

    # netlink: encode (Python) then send (kernel work happens inside send())
    ns = netns_add(f"{prefix}-netlink")
    try:
        nft(ns, "-f", "-", stdin=skeleton)
        with ElementWriter(ns) as w:
            w.encode(bench_ops(1000), TYPES)  # warm the generated builders
            t0, c0 = time.perf_counter(), _cpu()
            batch = w.encode(ops, TYPES)
            t1, c1 = time.perf_counter(), _cpu()
            w.send(batch)
            t2, c2 = time.perf_counter(), _cpu()
    finally:
        netns_del(ns)
    rows.append(_row("netlink: encode", t0, c0, t1, c1))
    rows.append(_row("netlink: send+commit", t1, c1, t2, c2))
    rows.append(_row("netlink: total", t0, c0, t2, c2))

    # libnftables: render text, then nft_run_cmd_from_buffer
    ns = netns_add(f"{prefix}-libnftables")
    try:
        nft(ns, "-f", "-", stdin=skeleton)
        lib = LibNftables(ns)
        try:
            t0, c0 = time.perf_counter(), _cpu()
            text = ops_text(ops)
            t1, c1 = time.perf_counter(), _cpu()
            lib.run(text)
            t2, c2 = time.perf_counter(), _cpu()
        finally:
            lib.close()
    finally:
        netns_del(ns)
    rows.append(_row("libnftables: render", t0, c0, t1, c1))
    rows.append(_row("libnftables: run", t1, c1, t2, c2))
    rows.append(_row("libnftables: total", t0, c0, t2, c2))

    # nft -f (text already rendered)
    ns = netns_add(f"{prefix}-nft")
    try:
        nft(ns, "-f", "-", stdin=skeleton)
        t0, c0 = time.perf_counter(), _cpu()
        nft(ns, "-f", "-", stdin=text)
        t1, c1 = time.perf_counter(), _cpu()
    finally:
        netns_del(ns)
    rows.append(_row("nft -f (excl. render)", t0, c0, t1, c1))

    return {
        "elements": n,
        "batch_mib": len(batch.data) / 2**20,
        "messages": len(batch.messages),
        "encode_ns_per_element": rows[0][1] / n * 1e9,
        "rows": [
            {"step": step, "wall_s": wall, "user_s": user, "sys_s": sys_}
            for step, wall, user, sys_ in rows
        ],
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['elements']} elements, {result['batch_mib']:.1f} MiB batch, "
        f"{result['messages']} messages; Python encode "
        f"{result['encode_ns_per_element']:.0f} ns/element",
        f"{'':24} {'wall s':>8} {'user s':>8} {'sys s':>8}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['step']:24} {r['wall_s']:8.3f} {r['user_s']:8.3f} {r['sys_s']:8.3f}")
    return "\n".join(lines)


def elements_list(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"needs element counts of at least 1: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--elements",
        type=elements_list,
        default=[100_000, 785_000],
        help="comma list of element counts (default 100000,785000)",
    )
    p.add_argument("--out", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/netlink.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "results": [],
    }
    code = 0
    try:
        for n in args.elements:
            result = one_size(n)
            report["results"].append(result)
            print(("\n" if n != args.elements[0] else "") + table(result), flush=True)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        code = 130
    finally:
        netns_del_all()
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) + "\n")
            print(f"wrote {out}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
