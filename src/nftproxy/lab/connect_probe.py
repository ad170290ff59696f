"""TCP connects from inside a network namespace, for bench/compare.py.

    ip netns exec <ns> python -m nftproxy.lab.connect_probe wait IP:PORT [--timeout 600]
    ip netns exec <ns> python -m nftproxy.lab.connect_probe latency IP:PORT... [--count 1000]
    ip netns exec <ns> python -m nftproxy.lab.connect_probe rate IP:PORT... [--seconds 3]

wait:    connect every 10 ms until one succeeds; print the CLOCK_MONOTONIC time it did
         (the same clock as the parent's time.monotonic()) and the first line the server
         sent (what answered), or exit 1 at --timeout.
latency: --count sequential connects to each target; time from connect() to established,
         each closed with a reset (no TIME_WAIT, so ports never run out); JSON out.
rate:    new connections per second over --seconds from --workers processes, round robin
         over the targets; bounded by --seconds and --max-connects; JSON out.

A connect that fails or takes longer than --connect-timeout counts as a failure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import struct
import sys
import time

__all__ = [
    "LINGER_RESET",
    "cmd_latency",
    "cmd_rate",
    "cmd_wait",
    "connect_once",
    "greeting",
    "main",
    "quantile",
    "target",
]

LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST: no TIME_WAIT on this side


def target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def connect_once(addr: tuple[str, int], timeout: float) -> float | None:
    """Seconds until the connection was established, or None when it failed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    s.settimeout(timeout)
    try:
        t = time.perf_counter()
        s.connect(addr)
        return time.perf_counter() - t
    except OSError:
        return None
    finally:
        s.close()


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def greeting(addr: tuple[str, int], timeout: float) -> str | None:
    """The first line the server sends, or None when the connect fails."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            return s.makefile("rb").readline().decode(errors="replace").strip()
    except OSError:
        return None


def cmd_wait(args: argparse.Namespace) -> int:
    addr = target(args.targets[0])
    deadline = time.monotonic() + args.timeout
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if connect_once(addr, min(args.connect_timeout, 0.2)) is not None:
            done = time.monotonic()
            print(f"{done:.6f} {greeting(addr, args.connect_timeout) or '?'}", flush=True)
            return 0
        time.sleep(0.01)
    return 1


def cmd_latency(args: argparse.Namespace) -> int:
    out = {}
    for text in args.targets:
        addr = target(text)
        times = [connect_once(addr, args.connect_timeout) for _ in range(args.count)]
        ok = [t * 1e3 for t in times if t is not None]
        out[text] = {
            "count": args.count,
            "failures": args.count - len(ok),
            "p50_ms": quantile(ok, 0.5),
            "p99_ms": quantile(ok, 0.99),
            "mean_ms": sum(ok) / len(ok) if ok else None,
        }
    json.dump(out, sys.stdout)
    print()
    return 0


def _rate_worker(
    targets: list[tuple[str, int]], until: float, limit: int, timeout: float, q: object
) -> None:
    ok = failed = 0
    i = 0
    while time.monotonic() < until and ok + failed < limit:
        if connect_once(targets[i % len(targets)], timeout) is None:
            failed += 1
        else:
            ok += 1
        i += 1
    q.put((ok, failed))  # type: ignore[attr-defined]


def cmd_rate(args: argparse.Namespace) -> int:
    targets = [target(t) for t in args.targets]
    q: multiprocessing.Queue[tuple[int, int]] = multiprocessing.Queue()
    start = time.monotonic()
    until = start + args.seconds
    per_worker = max(1, args.max_connects // args.workers)
    procs = [
        multiprocessing.Process(
            target=_rate_worker, args=(targets, until, per_worker, args.connect_timeout, q)
        )
        for _ in range(args.workers)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=args.seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    wall = time.monotonic() - start
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    json.dump(
        {
            "workers": args.workers,
            "seconds": wall,
            "connects": ok,
            "failures": failed,
            "per_second": ok / wall if wall > 0 else 0.0,
        },
        sys.stdout,
    )
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("wait", "latency", "rate"))
    p.add_argument("targets", nargs="+", metavar="IP:PORT")
    p.add_argument("--timeout", type=float, default=600.0, help="wait: give up after")
    p.add_argument("--connect-timeout", type=float, default=1.0)
    p.add_argument("--count", type=int, default=1000, help="latency: connects per target")
    p.add_argument("--seconds", type=float, default=3.0, help="rate: length")
    p.add_argument("--workers", type=int, default=2, help="rate: processes")
    p.add_argument("--max-connects", type=int, default=100_000, help="rate: upper bound")
    args = p.parse_args(argv)
    return {"wait": cmd_wait, "latency": cmd_latency, "rate": cmd_rate}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
