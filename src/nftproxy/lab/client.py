"""A test client, run inside a lab namespace:

    python -m nftproxy.lab.client --to HOST:PORT --proto tcp|udp --count N
        [--timeout S] [--source IP] [--interval S] [--json]

It makes N independent attempts, each a fresh TCP connection or a fresh UDP socket (so
each is a new conntrack entry and goes through the Service's load balancing again), and
counts the first line of every reply ("NAME SOURCE_IP", see `nftproxy.lab.echo`) and the
failures: refused (ECONNREFUSED, a TCP reset, ICMP port unreachable for UDP) apart from
timeouts and anything else. IPv6 literals are written `[fd00::1]:80`.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Literal

from nftproxy.lab.result import Result

__all__ = [
    "Outcome",
    "Proto",
    "attempt",
    "format_target",
    "main",
    "parse_target",
    "run",
]

Proto = Literal["tcp", "udp"]
Outcome = tuple[Literal["reply", "refused", "timeout", "other"], str]

_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}


def parse_target(text: str) -> tuple[str, int]:
    """'10.0.0.1:80' or '[fd00::1]:80' -> (canonical address, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: bad port {port!r}")
    return str(addr), int(port)


def format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _classify(exc: OSError) -> Outcome:
    if isinstance(exc, TimeoutError):
        return ("timeout", "")
    code = exc.errno
    name = errno.errorcode.get(code, "EUNKNOWN") if code is not None else type(exc).__name__
    if code in _REFUSED:
        return ("refused", name)
    return ("other", name)


def _recv_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > 65536:
            break
    return data.split(b"\n", 1)[0]


def attempt(host: str, port: int, proto: Proto, timeout: float, source: str | None) -> Outcome:
    """One fresh connection (TCP) or socket (UDP): its reply line or how it failed."""
    family = _family(host)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, kind) as sock:
            if source is not None:
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect((host, port))
            if proto == "udp":
                sock.send(b"ping\n")
            line = _recv_line(sock, deadline)
    except OSError as exc:
        return _classify(exc)
    if not line:
        return ("other", "empty reply")
    return ("reply", line.decode("utf-8", "replace").strip())


def run(
    host: str,
    port: int,
    proto: Proto = "tcp",
    count: int = 1,
    *,
    timeout: float = 1.0,
    source: str | None = None,
    interval: float = 0.0,
) -> Result:
    """`count` attempts one after another, `interval` seconds apart."""
    result = Result()
    start = time.monotonic()
    for i in range(count):
        if i and interval > 0:
            time.sleep(interval)
        kind, detail = attempt(host, port, proto, timeout, source)
        if kind == "reply":
            result.replies[detail] += 1
        elif kind == "refused":
            result.refused += 1
            result.errors[detail] += 1
        elif kind == "timeout":
            result.timeouts += 1
        else:
            result.other += 1
            result.errors[detail] += 1
    result.elapsed = time.monotonic() - start
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nftproxy.lab.client", description=__doc__)
    p.add_argument("--to", required=True, help="HOST:PORT, IPv6 as [ADDRESS]:PORT")
    p.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--count", type=int, default=1, help="independent attempts (default 1)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    p.add_argument("--source", help="bind this source address")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between attempts")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        host, port = parse_target(args.to)
    except ValueError as exc:
        p.error(str(exc))
    if args.count < 0 or args.count > 1_000_000:
        p.error("--count must be 0..1000000")
    if args.timeout <= 0 or args.interval < 0:
        p.error("--timeout must be positive and --interval not negative")
    if args.source is not None:
        try:
            args.source = str(ipaddress.ip_address(args.source))
        except ValueError as exc:
            p.error(str(exc))
    result = run(
        host,
        port,
        args.proto,
        args.count,
        timeout=args.timeout,
        source=args.source,
        interval=args.interval,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{args.proto} {format_target(host, port)} x{args.count}: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
