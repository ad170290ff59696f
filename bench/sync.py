#!/usr/bin/env python3
"""Sync benchmark: compile, full apply and one-endpoint changes at N Services.

    python bench/sync.py [--sizes 1000,10000,30000] [--endpoints 10] [--quick]
                         [--out bench/results/sync-<date>.json] [--markdown docs/benchmarks.md]

Needs root (it creates network namespaces `nftproxy-bench-<pid>-<n>` and removes them again,
also on failure, Ctrl-C or SIGTERM). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import inspect
import json
import os
import pstats
import re
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

from common import ip4, machine_info, netns_add, netns_del, netns_del_all, on_signal, save_report

from nftproxy.applying import make_plan, names_for, read_applied, run_plan
from nftproxy.config import NodeConfig, node_config
from nftproxy.kernel.backend import open_backend
from nftproxy.model import (
    Endpoint,
    EndpointSlice,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    SlicePort,
)
from nftproxy.ruleset.compile import Fragment, Names, compile_all, compile_service
from nftproxy.ruleset.desired import DesiredState, Ruleset, bulk_build
from nftproxy.ruleset.diff import AppliedState, ChainSummary, diff
from nftproxy.ruleset.listing import applied_from_json
from nftproxy.ruleset.transaction import (
    AddChain,
    AddElements,
    AddSet,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    FlushChain,
    Op,
    Transaction,
    chains_in_order,
)

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"full_apply_s": 4.0, "endpoint_change_ms": 20.0, "compile_s": 1.0}
MARK_BEGIN = "<!-- sync:begin -->"
MARK_END = "<!-- sync:end -->"

CLUSTER_IP_BASE = (10 << 24) | (96 << 16)  # 10.96.0.0/12
CLUSTER_IP_SIZE = 1 << 20
POD_IP_BASE = (10 << 24) | (244 << 16)  # 10.244.0.0/16
POD_IP_SIZE = 1 << 16
NEW_IP_BASE = (10 << 24) | (245 << 16)  # replacement endpoints: never used before
NODES = ("node-0", "node-1", "node-2")
NODEPORT_FIRST, NODEPORT_LAST = 1024, 65535
CHANGES = 20

# The library grew a scoped diff (DesiredState.take_changes + diff(..., scope)) and
# AppliedState.record; measure them when present, and fall back to this file's helpers if not.
HAS_SCOPE = hasattr(DesiredState, "take_changes") and "scope" in inspect.signature(diff).parameters
# Bulk builds may skip the change log (DesiredState(..., track_changes=False)).
HAS_BULK = "track_changes" in inspect.signature(DesiredState.__init__).parameters


def now() -> float:
    return time.perf_counter()


def nft_in(netns: str, *args: str, keep: bool = True) -> tuple[str, dict[str, float]]:
    """Run nft in the namespace; its output, and its wall, user and system time.

    CPU times are RUSAGE_CHILDREN deltas: `ip netns exec` execs nft, so they are nft's own.
    """
    cmd = ["ip", "netns", "exec", netns, "nft", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = now()
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE if keep else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = now() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr[:500]}")
    times = {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
    }
    return proc.stdout or "", times


# --- the synthetic cluster -------------------------------------------------------------


def build_model(
    n: int, e: int
) -> tuple[dict[ServiceName, Service], dict[ServiceName, EndpointSlice]]:
    """N ClusterIP+NodePort Services (one TCP port), one slice of E endpoints each.

    ClusterIPs are unique in 10.96.0.0/12. Pod IPs come from 10.244.0.0/16 in order, so past
    6553 Services (E=10) they repeat: a pod (on one fixed node) backs several Services, as in
    real clusters, and the shared hairpin set then has fewer elements than N*E. NodePorts are
    unique from 1024 up (the real 30000-32767 range only holds 2768), so N <= 64512.
    """
    if n > NODEPORT_LAST - NODEPORT_FIRST + 1:
        raise SystemExit(f"--sizes: at most {NODEPORT_LAST - NODEPORT_FIRST + 1} Services")
    tcp = Protocol.TCP
    slice_ports = (SlicePort("http", tcp, 8080),)
    services: dict[ServiceName, Service] = {}
    slices: dict[ServiceName, EndpointSlice] = {}
    k = 0
    for i in range(n):
        ns = f"ns-{i % 50}"
        name = f"svc-{i}"
        sid = ServiceName(ns, name)
        services[sid] = Service(
            id=sid,
            ports=(ServicePort("http", tcp, 80, node_port=NODEPORT_FIRST + i),),
            cluster_ips=(ip4(CLUSTER_IP_BASE + 1 + i % (CLUSTER_IP_SIZE - 2)),),
        )
        eps = []
        for _ in range(e):
            pod = k % (POD_IP_SIZE - 2)  # a pod keeps its node in every Service it backs
            eps.append(Endpoint(ip4(POD_IP_BASE + 1 + pod), NODES[pod % 3]))
            k += 1
        slices[sid] = EndpointSlice(ns, f"{name}-x1", name, 4, slice_ports, tuple(eps))
    return services, slices


def make_node() -> NodeConfig:
    return node_config(
        node_name="node-0",
        node_ips=["192.168.0.10"],
        cluster_cidrs=["10.244.0.0/16"],
    )


def compile_desired(
    services: dict[ServiceName, Service],
    slices: dict[ServiceName, EndpointSlice],
    node: NodeConfig,
    names: Names,
) -> tuple[DesiredState, dict[ServiceName, Fragment]]:
    """The same assembly as cli.build_ruleset and the daemon's full build (collector off
    during the build), without the conflict printing."""
    desired = (
        DesiredState(node, names, track_changes=False) if HAS_BULK else DesiredState(node, names)
    )
    with bulk_build():
        frags = compile_all(services, slices.values(), node, names)
        for sid, frag in frags.items():
            desired.set_service(sid, frag)
    if HAS_BULK:
        desired.track_changes = True
    if HAS_SCOPE:
        desired.take_changes()  # as the daemon's full build does: the next scope starts empty
    return desired, frags


# --- the fragment-scoped diff (a candidate for the library) ----------------------------


def fragment_diff(
    old: Fragment | None,
    new: Fragment | None,
    desired: Ruleset,
    applied: AppliedState,
    names: Names,
) -> Transaction:
    """`diff()` restricted to what one Service's fragments (before and after) can touch.

    Only keys, chains and sets named by the old or new fragment are compared, but they are
    compared between the *effective* desired ruleset and the applied state, so keys that
    several Services claim (hairpin pairs of a shared pod) come out right. O(fragment).
    """
    frags = [f for f in (old, new) if f is not None]
    tx = Transaction()

    set_names = {n for f in frags for n in f.sets}
    tx.ops += [
        AddSet(desired.sets[n]) for n in set_names if n in desired.sets and n not in applied.sets
    ]

    chain_names = {n for f in frags for n in f.chains}
    chain_names |= {spec.chain(names).name for f in frags for spec in f.picks}
    new_chains = [
        desired.chains[n] for n in chain_names if n in desired.chains and n not in applied.chains
    ]
    tx.ops += [AddChain(c) for c in chains_in_order(new_chains)]

    adds: list[Op] = []
    elements = [f.all_elements() if hasattr(f, "all_elements") else f.elements for f in frags]
    for set_name in {n for e in elements for n in e}:
        sdef = desired.sets.get(set_name)
        if sdef is not None and "dynamic" in sdef.flags:
            continue
        want = desired.elements.get(set_name, {})
        have = applied.elements.get(set_name, {})
        keys = dict.fromkeys(k for e in elements for k in e.get(set_name, ()))
        missing = object()
        dels = [k for k in keys if k in have and want.get(k, missing) != have[k]]
        add = [(k, want[k]) for k in keys if k in want and have.get(k, missing) != want[k]]
        if dels and set_name in applied.sets:
            tx.ops.append(DeleteElements(set_name, tuple(dels)))
        if add:
            adds.append(AddElements(set_name, tuple(add)))
    tx.ops += adds

    gone_chains = [n for n in chain_names if n not in desired.chains and n in applied.chains]
    tx.ops += [FlushChain(n) for n in gone_chains]
    tx.ops += [
        DeleteSet(n, n in applied.maps)
        for n in set_names
        if n not in desired.sets and n in applied.sets
    ]
    tx.ops += [DeleteChain(n) for n in gone_chains]
    return tx


def tx_signature(tx: Transaction) -> set[tuple[Any, ...]]:
    """Order-free content of a transaction, to compare two diffs."""
    out: set[tuple[Any, ...]] = set()
    for op in tx.ops:
        if isinstance(op, AddElements):
            out.update(("add-elem", op.set, k, repr(v)) for k, v in op.items)
        elif isinstance(op, DeleteElements):
            out.update(("del-elem", op.set, k) for k in op.keys)
        elif isinstance(op, AddChain):
            out.add(("add-chain", op.chain.name, len(op.chain.rules)))
        else:
            out.add((type(op).__name__, repr(op)))
    return out


def update_applied(applied: AppliedState, tx: Transaction) -> None:
    """What the daemon does after a successful transaction: O(transaction), no kernel read."""
    if hasattr(applied, "record"):
        applied.record(tx)
        return
    for op in tx.ops:
        if isinstance(op, AddSet):
            applied.sets.add(op.set.name)
            if op.set.is_map:
                applied.maps.add(op.set.name)
            if "dynamic" in op.set.flags:
                applied.dynamic.add(op.set.name)
            else:
                applied.elements.setdefault(op.set.name, {})
        elif isinstance(op, DeleteSet):
            applied.sets.discard(op.name)
            applied.maps.discard(op.name)
            applied.dynamic.discard(op.name)
            applied.elements.pop(op.name, None)
        elif isinstance(op, AddChain):
            applied.chains[op.chain.name] = ChainSummary(len(op.chain.rules))
        elif isinstance(op, DeleteChain):
            applied.chains.pop(op.name, None)
        elif isinstance(op, AddElements):
            applied.elements.setdefault(op.set, {}).update(op.items)
        elif isinstance(op, DeleteElements):
            elems = applied.elements.get(op.set, {})
            for k in op.keys:
                elems.pop(k, None)


# --- measurements ----------------------------------------------------------------------


class TimedBackend:
    """Wraps a backend: time spent running transactions (libnftables: parse + kernel;
    elements-only ones go to the kernel as netlink batches)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.run_s: list[float] = []

    def run(self, script: str) -> None:
        t = now()
        self.inner.run(script)
        self.run_s.append(now() - t)

    def apply(self, tx: Any, sets: Any, *, generation: int | None = None) -> bool:
        t = now()
        checked: bool = self.inner.apply(tx, sets, generation=generation)
        self.run_s.append(now() - t)
        return checked

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GcWatch:
    """Time spent in the cyclic garbage collector while active (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0  # generation-2 collections
        self._start: float | None = None

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = now()
        elif self._start is not None:
            self.seconds += now() - self._start
            self.full += info["generation"] == 2
            self._start = None

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)


def rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def kernel_counts(doc: dict[str, Any]) -> dict[str, int]:
    counts = {"chains": 0, "rules": 0, "sets": 0, "maps": 0, "elements": 0}
    for item in doc.get("nftables", []):
        if "chain" in item:
            counts["chains"] += 1
        elif "rule" in item:
            counts["rules"] += 1
        elif "set" in item:
            counts["sets"] += 1
            counts["elements"] += len(item["set"].get("elem", ()))
        elif "map" in item:
            counts["maps"] += 1
            counts["elements"] += len(item["map"].get("elem", ()))
    return counts


def profile_top(fn: Callable[[], object], limit: int = 15) -> dict[str, list[dict[str, Any]]]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{func} ({_short_path(file)}:{line})",
                "calls": nc,
                "primitive_calls": cc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
            }
        )
    rows.sort(key=lambda r: r["cumtime_s"], reverse=True)
    # The profiled lambda and cProfile's own frames say nothing: skip them.
    rows = [
        r for r in rows if not r["function"].startswith(("<lambda> (sync.py", "<method 'disable"))
    ]
    by_tot = sorted(rows, key=lambda r: r["tottime_s"], reverse=True)
    return {"by_cumulative": rows[:10], "by_tottime": by_tot[:limit]}


def _short_path(file: str) -> str:
    m = re.search(r"(nftproxy/.*|dataclasses\.py|<.*>)$", file)
    return m.group(1) if m else os.path.basename(file)


def median_max(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def one_size(
    n: int, e: int, *, profile: bool, deadline: float, log: Callable[[str], None]
) -> dict[str, Any]:
    # Other work on the machine inflates wall times; CPU times (`*_cpu_s`) are this process's.
    res: dict[str, Any] = {
        "services": n,
        "endpoints_per_service": e,
        "loadavg_before": os.getloadavg(),
    }
    gc.collect()
    rss0, maxrss0 = rss_now_kb(), max_rss_kb()

    def check_deadline(phase: str) -> None:
        if now() > deadline:
            raise TimeoutError(f"time budget exceeded before {phase} at N={n}")

    # 1. model objects
    t = now()
    services, slices = build_model(n, e)
    res["build_s"] = now() - t
    res["unique_pod_ips"] = min(n * e, POD_IP_SIZE - 2)
    log(f"N={n}: model built in {res['build_s']:.2f}s")

    # 2. compile
    node = make_node()
    names = names_for(1)
    t, c = now(), time.process_time()
    with GcWatch() as gcw:
        desired, frags = compile_desired(services, slices, node, names)
    res["compile_s"] = now() - t
    res["compile_cpu_s"] = time.process_time() - c
    res["compile_gc_s"] = gcw.seconds
    res["compile_gc_full_collections"] = gcw.full
    ruleset = desired.ruleset
    res["desired"] = {
        "chains": len(ruleset.chains),
        "rules": sum(len(c.rules) for c in ruleset.chains.values()),
        "sets_and_maps": len(ruleset.sets),
        "elements": sum(len(v) for v in ruleset.elements.values()),
    }
    log(f"N={n}: compiled in {res['compile_s']:.2f}s, {res['desired']['elements']} elements")
    check_deadline("apply")

    netns = netns_add(f"nftproxy-bench-{os.getpid()}-{n}")
    backend = None
    try:
        backend = open_backend(netns, prefer="lib")
        timed = TimedBackend(backend)
        res["backend"] = type(backend).__name__

        # 3. full apply into the empty namespace
        def build(nm: Names) -> Ruleset:
            if nm == names:
                return ruleset
            return compile_desired(services, slices, node, nm)[0].ruleset

        rss_compiled = rss_now_kb()
        t, c = now(), time.process_time()
        plan = make_plan(build, None)
        plan_s = now() - t
        plan_cpu_s = time.process_time() - c
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t = now()
        result = run_plan(timed, plan)
        run_s = now() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        in_lib = sum(timed.run_s)
        render_s = run_s - in_lib
        res["full_apply"] = {
            "plan_s": plan_s,
            "run_plan_s": run_s,
            "render_s": render_s,  # str(tx) inside run_plan, outside libnftables
            "libnftables_s": in_lib,
            # The main thread only renders (user time) while the nft worker thread runs:
            # process CPU deltas minus rendering split libnftables into userland and kernel.
            "libnftables_user_s": cpu1.ru_utime - cpu0.ru_utime - render_s,
            "libnftables_sys_s": cpu1.ru_stime - cpu0.ru_stime,
            "total_s": plan_s + run_s,
            "total_cpu_s": plan_cpu_s
            + (cpu1.ru_utime - cpu0.ru_utime)
            + (cpu1.ru_stime - cpu0.ru_stime),
            "transactions": result.transactions,
            "changes": result.changes,
            "mode": result.mode,
            "per_transaction_libnftables_s": [round(x, 4) for x in timed.run_s],
            "script_bytes": sum(len(str(tx)) for tx in plan.transactions) if profile else None,
        }
        log(
            f"N={n}: full apply plan {plan_s:.2f}s + run {run_s:.2f}s "
            f"(libnftables {in_lib:.2f}s) in {result.transactions} transactions"
        )
        check_deadline("kernel read-back")

        res["rss_phases_mb"] = {
            "before": rss0 / 1024,
            "after_compile": rss_compiled / 1024,
            "after_apply": rss_now_kb() / 1024,
            "maxrss_after_apply": max_rss_kb() / 1024,
        }

        # 5. what the kernel holds, read back with the nft binary
        listing, res["kernel_listing_nft"] = nft_in(
            netns, "-j", "list", "table", "inet", "nftproxy"
        )
        t = now()
        doc = json.loads(listing)
        res["kernel_listing_json_loads_s"] = now() - t
        res["kernel"] = kernel_counts(doc)
        t = now()
        from_kernel = applied_from_json(doc)
        t1 = now()
        noop = diff(ruleset, from_kernel)
        res["readback"] = {
            "applied_from_json_s": t1 - t,
            "diff_s": now() - t1,
            "diff_size": noop.size(),
        }
        del doc, listing, from_kernel, noop
        # What re-reading the kernel would cost (libnftables JSON + applied_from_json): the
        # CLI's plan/apply pay it, the daemon does not. A context of its own, so the element
        # cache that listing leaves behind does not slow the apply context's next change.
        reader = open_backend(netns, prefer="lib")
        t = now()
        reread = read_applied(reader)
        res["read_applied_s"] = now() - t
        reader.close()
        del reread, reader
        gc.collect()
        res["rss_phases_mb"]["maxrss_after_readback"] = max_rss_kb() / 1024
        log(
            f"N={n}: kernel holds {res['kernel']} (nft -j list "
            f"{res['kernel_listing_nft']['wall_s']:.1f}s), read-back diff size "
            f"{res['readback']['diff_size']}"
        )

        # The daemon keeps what it applied in memory (no kernel read per change).
        t = now()
        applied = AppliedState.of(ruleset)
        res["applied_state_of_s"] = now() - t

        # 4. one endpoint change, CHANGES times on different Services
        check_deadline("endpoint changes")
        order = sorted(services, key=lambda s: (s.namespace, s.name))
        picks = [order[(i * len(order)) // CHANGES + i % 7] for i in range(CHANGES)]
        rows: list[dict[str, Any]] = []
        for i, sid in enumerate(picks):
            old_slice = slices[sid]
            eps = list(old_slice.endpoints)
            j = i % len(eps)
            eps[j] = eps[j].with_ip(ip4(NEW_IP_BASE + 1 + i))
            new_slice = old_slice.with_endpoints(eps)
            old_frag = frags[sid]

            gcw = GcWatch().__enter__()
            t0 = now()
            new_frag = compile_service(services[sid], (new_slice,), node, names)
            desired.set_service(sid, new_frag)
            t1 = now()
            tx = diff(ruleset, applied)  # walks every element: O(table)
            t2 = now()
            ftx = fragment_diff(old_frag, new_frag, ruleset, applied, names)
            t3 = now()
            stx = diff(ruleset, applied, desired.take_changes()) if HAS_SCOPE else None
            t4 = now()
            # Rendering is measured as before; only chain and interval-set parts still use it.
            len(str(tx))
            t5 = now()
            # As the daemon runs it: new chains, then elements (netlink), then removals.
            for part in tx.split():
                backend.apply(part, ruleset.sets)
            t6 = now()
            update_applied(applied, tx)
            t7 = now()
            gcw.__exit__()
            slices[sid] = new_slice
            frags[sid] = new_frag
            sig = tx_signature(tx)
            rows.append(
                {
                    "service": str(sid),
                    "compile_ms": (t1 - t0) * 1e3,
                    "full_diff_ms": (t2 - t1) * 1e3,
                    "fragment_diff_ms": (t3 - t2) * 1e3,
                    "scoped_diff_ms": (t4 - t3) * 1e3 if stx is not None else None,
                    "render_ms": (t5 - t4) * 1e3,
                    "kernel_ms": (t6 - t5) * 1e3,
                    "update_applied_ms": (t7 - t6) * 1e3,
                    "gc_ms": gcw.seconds * 1e3,
                    "gc_full_collections": gcw.full,
                    "tx_size": tx.size(),
                    "fragment_diff_equal": sig == tx_signature(ftx),
                    "scoped_diff_equal": None if stx is None else sig == tx_signature(stx),
                }
            )
        res["endpoint_change"] = {
            "repeats": len(rows),
            "compile_ms": median_max([r["compile_ms"] for r in rows]),
            "full_diff_ms": median_max([r["full_diff_ms"] for r in rows]),
            "fragment_diff_ms": median_max([r["fragment_diff_ms"] for r in rows]),
            "scoped_diff_ms": median_max([r["scoped_diff_ms"] for r in rows])
            if HAS_SCOPE
            else None,
            "update_applied_ms": median_max([r["update_applied_ms"] for r in rows]),
            "render_ms": median_max([r["render_ms"] for r in rows]),
            "kernel_ms": median_max([r["kernel_ms"] for r in rows]),
            # The first change runs right after read_applied() in the same libnftables
            # context, whose cache then holds every element: it pays for dropping that cache.
            "kernel_ms_first": rows[0]["kernel_ms"],
            "kernel_ms_without_first": median_max([r["kernel_ms"] for r in rows[1:]]),
            "gc_ms": median_max([r["gc_ms"] for r in rows]),
            "gc_full_collections": sum(r["gc_full_collections"] for r in rows),
            "total_with_full_diff_ms": median_max(
                [
                    r["compile_ms"] + r["full_diff_ms"] + r["render_ms"] + r["kernel_ms"]
                    for r in rows
                ]
            ),
            "total_with_fragment_diff_ms": median_max(
                [
                    r["compile_ms"] + r["fragment_diff_ms"] + r["render_ms"] + r["kernel_ms"]
                    for r in rows
                ]
            ),
            "total_with_scoped_diff_ms": median_max(
                [
                    r["compile_ms"] + r["scoped_diff_ms"] + r["render_ms"] + r["kernel_ms"]
                    for r in rows
                ]
            )
            if HAS_SCOPE
            else None,
            "fragment_diff_equal_all": all(r["fragment_diff_equal"] for r in rows),
            "scoped_diff_equal_all": all(r["scoped_diff_equal"] for r in rows)
            if HAS_SCOPE
            else None,
            "tx_size": median_max([float(r["tx_size"]) for r in rows]),
            "rows": rows,
        }
        ec = res["endpoint_change"]
        log(
            f"N={n}: endpoint change median compile {ec['compile_ms']['median']:.2f}ms, "
            f"full diff {ec['full_diff_ms']['median']:.1f}ms, fragment diff "
            f"{ec['fragment_diff_ms']['median']:.3f}ms, scoped diff "
            f"{ec['scoped_diff_ms']['median'] if HAS_SCOPE else float('nan'):.3f}ms, "
            f"kernel {ec['kernel_ms']['median']:.2f}ms, equal "
            f"{ec['fragment_diff_equal_all']}/{ec['scoped_diff_equal_all']}"
        )
        # The kernel must now equal the desired state again.
        final_text, _ = nft_in(netns, "-j", "list", "table", "inet", "nftproxy")
        final = applied_from_json(json.loads(final_text))
        del final_text
        res["endpoint_change"]["kernel_matches_after"] = diff(ruleset, final).size() == 0
        del final

        # 7. where full apply time goes (largest N only)
        if profile:
            check_deadline("profile")
            res["rss_phases_mb"]["maxrss_before_profile"] = max_rss_kb() / 1024
            # Planned again: a plan reads the ruleset's elements when it runs, and the
            # endpoint changes above have altered the ruleset since the first one.
            res["profile"] = profile_apply(make_plan(build, None), n, log)
            # The same listing without elements (-t) and as text, for read_applied's cost.
            _, res["profile"]["nft_list_terse_json"] = nft_in(
                netns, "-t", "-j", "list", "table", "inet", "nftproxy", keep=False
            )
            _, res["profile"]["nft_list_text"] = nft_in(
                netns, "list", "table", "inet", "nftproxy", keep=False
            )
            # How much of compile is the cyclic garbage collector walking a large heap.
            gc.collect()
            gc.disable()
            try:
                t = now()
                compile_desired(services, slices, node, names)
                res["profile"]["compile_gc_disabled_s"] = now() - t
            finally:
                gc.enable()
            gc.collect()
            t_prof = now()
            res["profile"]["compile_cprofile"] = profile_top(
                lambda: compile_desired(services, slices, node, names)
            )
            res["profile"]["diff_cprofile"] = profile_top(lambda: diff(ruleset, applied))
            log(f"N={n}: cProfile runs took {now() - t_prof:.1f}s")
    finally:
        if backend is not None:
            backend.close()
        netns_del(netns)

    res["loadavg_after"] = os.getloadavg()
    # 6. memory
    res["rss"] = {
        "maxrss_mb": max_rss_kb() / 1024,
        "maxrss_delta_mb": (max_rss_kb() - maxrss0) / 1024,
        "rss_before_mb": rss0 / 1024,
        "rss_with_state_mb": rss_now_kb() / 1024,
        "rss_delta_mb": (rss_now_kb() - rss0) / 1024,
    }
    return res


def profile_apply(plan: Any, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the full-apply text through the nft binary: `-c` (check) and a real load.

    `nft -c` parses, evaluates and *sends the batch to the kernel without its end message*:
    the kernel validates every object and aborts. So it is not parser-only; the nft process's
    user CPU time is what parsing + evaluation + netlink encoding cost, system time is kernel.
    """
    out: dict[str, Any] = {}
    t = now()
    text = "".join(str(tx) for tx in plan.transactions)
    out["render_all_s"] = now() - t
    out["script_lines"] = text.count("\n")
    out["script_bytes"] = len(text)
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
        f.write(text)
        path = f.name
    del text
    try:
        for mode, args in (("check", ["-c", "-f", path]), ("load", ["-f", path])):
            ns = netns_add(f"nftproxy-bench-{os.getpid()}-{n}-{mode}")
            try:
                _, out[f"nft_{mode}"] = nft_in(ns, *args, keep=False)
            finally:
                netns_del(ns)
            log(f"N={n}: nft {' '.join(args[:-1])} (one transaction): {out[f'nft_{mode}']}")
    finally:
        os.unlink(path)
    return out


# --- output ----------------------------------------------------------------------------


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        MARK_BEGIN,
        "## Sync benchmark (`bench/sync.py`)",
        "",
        f"Run {report['date']}: `{report['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['nft']}, "
        f"Python {m['python']}; nftproxy at {m['source_commit']}"
        f"{' (with uncommitted changes in src/)' if m['source_modified'] else ''}.  ",
        f"Workload: N ClusterIP+NodePort Services, one TCP port, {report['endpoints']} "
        "endpoints each in one EndpointSlice over 3 nodes; libnftables backend; a fresh "
        "network namespace per N.  ",
        f"Targets (30k x 10): compile <= {TARGETS['compile_s']} s, full apply <= "
        f"{TARGETS['full_apply_s']} s, one endpoint change <= {TARGETS['endpoint_change_ms']} ms.",
        "",
        "| N | elements | build s | compile s (CPU; in GC) | full apply s: plan + render + kernel "
        "writes: netlink elements + nft text (user / sys) | txs "
        "| endpoint change ms, median / max: with full `diff()` "
        "| with scoped `diff()` | with fragment diff | diff ms median: full / scoped / fragment "
        "| nft run ms | kernel chains / rules / sets+maps | RSS after apply MB | max RSS MB "
        "| load avg |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['services']} | error: {r['error']} |" + " |" * 13)
            continue
        fa, ec, k = r["full_apply"], r["endpoint_change"], r["kernel"]
        tf, tg = ec["total_with_full_diff_ms"], ec["total_with_fragment_diff_ms"]
        ts = ec.get("total_with_scoped_diff_ms")
        sd = ec.get("scoped_diff_ms")
        scoped = f"{fmt(ts['median'], 2)} / {fmt(ts['max'], 2)}" if ts else "n/a"
        lines.append(
            f"| {r['services']} | {k['elements']} | {fmt(r['build_s'])} | {fmt(r['compile_s'])} "
            f"({fmt(r['compile_cpu_s'])}; {fmt(r['compile_gc_s'])}) "
            f"| **{fmt(fa['total_s'])}**: {fmt(fa['plan_s'])} + {fmt(fa['render_s'])} + "
            f"{fmt(fa['libnftables_s'])} ({fmt(fa['libnftables_user_s'])} / "
            f"{fmt(fa['libnftables_sys_s'])}) | {fa['transactions']} "
            f"| {fmt(tf['median'], 1)} / {fmt(tf['max'], 1)} "
            f"| {scoped} "
            f"| {fmt(tg['median'], 2)} / {fmt(tg['max'], 2)} "
            f"| {fmt(ec['full_diff_ms']['median'], 1)} / "
            f"{fmt(sd['median'], 3) if sd else 'n/a'} / {fmt(ec['fragment_diff_ms']['median'], 3)} "
            f"| {fmt(ec['kernel_ms']['median'], 2)} (first {fmt(ec['kernel_ms_first'], 0)}) "
            f"| {k['chains']} / {k['rules']} / {k['sets'] + k['maps']} "
            f"| {fmt(r['rss_phases_mb']['after_apply'], 0)} | {fmt(r['rss']['maxrss_mb'], 0)} "
            f"| {fmt(r['loadavg_before'][0], 1)} |"
        )
    lines += [
        "",
        "Endpoint change = compile one Service + `DesiredState.set_service` + diff against the "
        "in-memory applied state + render + kernel run "
        "(elements as netlink batches, chains as nft text; 20 Services, one endpoint IP each). "
        "The scoped diff is the library's `diff(desired, applied, desired.take_changes())`; the "
        "fragment diff (`bench/sync.py: fragment_diff`) compares only the keys of the "
        "Service's old and new fragments (effective desired vs applied). Both are checked "
        "against the full `diff()` on every change (see `*_equal_all` in the JSON). "
        "The first change of each N runs right after `read_applied()` used the same "
        "libnftables context (as the daemon's full sync does) and pays for dropping the "
        'element cache that listing left behind: see "first". '
        "Max RSS is cumulative over the run and at the largest N includes the profiling below.",
    ]
    prof = next((r for r in report["results"] if "profile" in r), None)
    if prof:
        p = prof["profile"]
        c, ld = p["nft_check"], p["nft_load"]
        lines += [
            "",
            f"### Where the time goes at N={prof['services']}",
            "",
            f"- Full-apply text ({p['script_lines']} lines, {p['script_bytes'] / 1e6:.1f} MB, "
            f"one transaction) through the nft binary: `nft -f` {fmt(ld['wall_s'])} s "
            f"(user {fmt(ld['user_s'])}, sys {fmt(ld['sys_s'])}); `nft -c -f` {fmt(c['wall_s'])} s "
            f"(user {fmt(c['user_s'])}, sys {fmt(c['sys_s'])}). `nft -c` is not parser-only: it "
            "sends the batch without its end message, so the kernel validates everything and "
            "aborts. User time = nft parse + evaluate + netlink encoding; sys time = kernel.",
            f"- Reading the table back: `nft -j list table` "
            f"{fmt(prof['kernel_listing_nft']['wall_s'])} s, "
            f"text {fmt(p['nft_list_text']['wall_s'])} s, terse (`-t`, no elements) "
            f"{fmt(p['nft_list_terse_json']['wall_s'])} s; `json.loads` "
            f"{fmt(prof['kernel_listing_json_loads_s'])} s, `applied_from_json` "
            f"{fmt(prof['readback']['applied_from_json_s'])} s; the daemon's "
            f"`read_applied` (libnftables) {fmt(prof['read_applied_s'])} s, against "
            f"{fmt(prof['applied_state_of_s'], 3)} s for `AppliedState.of(desired)`.",
            f"- Compile with the cyclic GC disabled: {fmt(p['compile_gc_disabled_s'])} s "
            f"(vs {fmt(prof['compile_s'])} s).",
            "",
            "Compile (compile_all + DesiredState assembly) under cProfile, top 10 by cumulative "
            "time (profiling roughly doubles times):",
            "",
            "| function | calls | cumulative s | own s |",
            "|---|---:|---:|---:|",
        ]
        for row in p["compile_cprofile"]["by_cumulative"]:
            fn, calls = row["function"], row["calls"]
            lines.append(f"| `{fn}` | {calls} | {row['cumtime_s']} | {row['tottime_s']} |")
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,30000", help="comma list of Service counts")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    p.add_argument("--quick", action="store_true", help="N=1000 only")
    p.add_argument("--out", help="JSON output (default bench/results/sync-<date>.json)")
    p.add_argument(
        "--markdown",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown file whose sync section is replaced ('' to skip)",
    )
    p.add_argument(
        "--budget", type=float, default=600, help="stop after this many seconds (default 600)"
    )
    args = p.parse_args(argv)
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if os.geteuid() != 0:
        print("bench/sync.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    start = now()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"sync-{stamp}.json"
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "endpoints": args.endpoints,
        "targets": TARGETS,
        "results": [],
    }

    def log(msg: str) -> None:
        print(f"[{now() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    code = 0
    try:
        for n in sizes:
            try:
                r = one_size(
                    n,
                    args.endpoints,
                    profile=(n == max(sizes)),
                    deadline=start + args.budget,
                    log=log,
                )
                gc.collect()  # the previous size's objects are gone once one_size returns
                if "profile" in r:
                    r["profile"]["services"] = n
                report["results"].append(r)
            except TimeoutError as exc:
                log(str(exc))
                report["results"].append({"services": n, "error": str(exc)})
                code = 2
                break
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); cleaning up")
        code = 130
    finally:
        netns_del_all()
        report["wall_s"] = now() - start
        save_report(report, out, args.markdown, markdown, (MARK_BEGIN, MARK_END), log)
    return code


if __name__ == "__main__":
    sys.exit(main())
