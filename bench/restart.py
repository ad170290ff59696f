#!/usr/bin/env python3
"""Restart and repair benchmark: what a daemon costs when its table is already there.

    python bench/restart.py [--sizes 1000,10000,30000] [--endpoints 10] [--quick]
                            [--out bench/results/restart-<date>.json]

For each N it creates a network namespace `nftproxy-restart-<pid>-<n>` (removed again, also
on failure or Ctrl-C) and runs each phase in a fresh Python process, as a daemon would be:

  cold     an empty table: the daemon's first full sync builds it (a generation).
  restart  the same inputs, a new process: its full sync finds the table's record (digest
           and generation id) equal to its own and commits nothing. Reported: the sync,
           the comparison inside it (none here), the process's peak RSS, and how far the
           kernel's generation id moved (0: no commit).
  restart-compare  the same, after someone committed to another table: the record no
           longer vouches for the table, which is compared set by set.
  repair   after a restart, someone deletes a NodePort, then one endpoint element, then
           1,000, then flushes the endpoint map; the daemon's loop and commit monitor run
           as in `nftproxy run`. Reported: from the foreign commit to the end of the
           daemon's commit that put it back, and how (an in-place repair, or a new
           generation when the damage is too big for one transaction).
  shrink   a fresh table, then every Service goes away: resident memory before and after.

The synthetic cluster is bench/sync.py's: N ClusterIP+NodePort Services, E endpoints each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import machine_info
from sync import build_model, make_node

from nftproxy import verifying
from nftproxy.applying import names_for
from nftproxy.kernel.backend import open_backend
from nftproxy.proxier import Proxier
from nftproxy.ruleset.schema import ElementKey

ROOT = Path(__file__).resolve().parent.parent


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proxier_for(netns: str, n: int, e: int) -> Proxier:
    services, slices = build_model(n, e)
    proxier = Proxier(open_backend(netns), make_node(), min_sync_period=0.0)
    proxier.replace_all(services, {(s.namespace, s.name): s for s in slices.values()})
    return proxier


def phase_cold(netns: str, n: int, e: int) -> dict[str, Any]:
    proxier = proxier_for(netns, n, e)
    start = time.perf_counter()
    result = proxier.sync()
    return {
        "sync_s": time.perf_counter() - start,
        "mode": result.mode,
        "changes": result.changes,
        "max_rss_mb": max_rss_mb(),
    }


def phase_restart(netns: str, n: int, e: int, *, foreign_commit: bool = False) -> dict[str, Any]:
    if foreign_commit:
        # Someone committed while no daemon ran (another table): the record no longer
        # vouches for the table, which is then compared set by set.
        nft(netns, "add", "table", "inet", "someone-else")
        nft(netns, "delete", "table", "inet", "someone-else")
    proxier = proxier_for(netns, n, e)
    backend = proxier.backend
    gen_before = backend.generation()  # type: ignore[attr-defined]
    compared: list[float] = []
    original = verifying.differences

    def timed(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args)
        finally:
            compared.append(time.perf_counter() - start)

    verifying.differences = timed  # type: ignore[assignment]
    start = time.perf_counter()
    result = proxier.sync()
    took = time.perf_counter() - start
    verifying.differences = original  # type: ignore[assignment]
    return {
        "sync_s": took,
        "compare_s": sum(compared),
        "mode": result.mode,
        "changes": result.changes,
        "generation_moved": backend.generation() - gen_before,  # type: ignore[attr-defined]
        "max_rss_mb": max_rss_mb(),
    }


def nft(netns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", *args], check=True, capture_output=True)


def phase_repair(netns: str, n: int, e: int) -> dict[str, Any]:
    proxier = proxier_for(netns, n, e)
    proxier.sync()
    stop = threading.Event()
    loop = threading.Thread(target=proxier.run, args=(stop,), daemon=True)
    loop.start()
    threading.Thread(target=proxier.watch_commits, args=(stop,), daemon=True).start()
    out: dict[str, Any] = {}

    # When a repair (or the full sync a repair asked for) put something back: the daemon's
    # own account, not a probe of the kernel (nft's `get element` lists the whole map).
    mended: list[float] = []
    repair, sync = proxier.repair, proxier.sync

    def timed_repair(**kw: Any) -> Any:
        result = repair(**kw)
        if result.changes:
            mended.append(time.perf_counter())
        return result

    def timed_sync() -> Any:
        result = sync()
        if result.changes:
            mended.append(time.perf_counter())
        return result

    proxier.repair = timed_repair  # type: ignore[method-assign]
    proxier.sync = timed_sync  # type: ignore[method-assign]

    def damage(label: str, command: list[str]) -> None:
        full_before = proxier.stats.full_syncs
        time.sleep(2.0)  # past the loop's rate limit between comparisons
        mended.clear()
        start = time.perf_counter()
        nft(netns, *command)
        deadline = start + 120
        while not mended and time.perf_counter() < deadline:
            time.sleep(0.01)
        out[label] = {
            "repaired_s": mended[0] - start if mended else None,
            "how": "generation" if proxier.stats.full_syncs > full_before else "in place",
        }

    emap = f"{names_for(1).prefix}endpoints4-tcp"
    services = sorted(proxier.services(), key=lambda s: (s.id.namespace, s.id.name))
    keys = [(s.cluster_ips[0], s.ports[0].port, 0) for s in services]

    def spelled(chosen: list[ElementKey]) -> str:
        return ", ".join(" . ".join(map(str, k)) for k in chosen)

    damage(
        "one_node_port",
        ["delete", "element", "inet", "nftproxy", f"{names_for(1).prefix}nodeports4",
         f"{{ tcp . {services[0].ports[0].node_port} }}"],
    )  # fmt: skip
    damage(
        "one_element", ["delete", "element", "inet", "nftproxy", emap, f"{{ {spelled(keys[:1])} }}"]
    )
    damage(
        "thousand_elements",
        ["delete", "element", "inet", "nftproxy", emap, f"{{ {spelled(keys[:1000])} }}"],
    )
    damage("flushed_map", ["flush", "map", "inet", "nftproxy", emap])
    stop.set()
    loop.join(timeout=60)
    out["in_sync_after"] = proxier.repair().mode == "noop"
    out["max_rss_mb"] = max_rss_mb()
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def phase_shrink(netns: str, n: int, e: int) -> dict[str, Any]:
    """A fresh table of N Services, then every Service goes away: resident memory before
    and after (the daemon gives memory back when the cluster shrinks to under half)."""
    nft(netns, "delete", "table", "inet", "nftproxy")
    proxier = proxier_for(netns, n, e)
    proxier.sync()
    full = rss_mb()
    proxier.replace_all({}, {})
    proxier.sync()
    return {"rss_full_mb": full, "rss_after_all_went_mb": rss_mb()}


def phase_restart_after_foreign_commit(netns: str, n: int, e: int) -> dict[str, Any]:
    return phase_restart(netns, n, e, foreign_commit=True)


PHASES = {
    "cold": phase_cold,
    "restart": phase_restart,
    "restart-compare": phase_restart_after_foreign_commit,
    "repair": phase_repair,
    "shrink": phase_shrink,
}


def run_phase(phase: str, netns: str, n: int, e: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--netns", netns, f"--n={n}", f"--e={e}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} at N={n} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,30000")
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="N=1000 only")
    p.add_argument("--out")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--netns", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--e", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.netns, args.n, args.e)))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench/restart.py needs root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    sizes = [1000] if args.quick else [int(x) for x in args.sizes.split(",")]
    report: dict[str, Any] = {"machine": machine_info(), "endpoints": args.endpoints, "runs": {}}
    for n in sizes:
        netns = f"nftproxy-restart-{os.getpid()}-{n}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            run: dict[str, Any] = {}
            for phase in ("cold", "restart", "restart-compare", "repair", "shrink"):
                run[phase] = run_phase(phase, netns, n, args.endpoints)
                print(f"N={n} {phase}: {json.dumps(run[phase])}", flush=True)
            report["runs"][str(n)] = run
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"restart-{stamp}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
