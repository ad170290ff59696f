"""Print when set elements carrying given IPv4 addresses are committed to nftables.

    ip netns exec <ns> python -m nftproxy.lab.element_monitor [--prefix 10.200.] [--anywhere]

The benchmarks' clock for "in the kernel" (bench/api.py, bench/compare.py).

Subscribes to the kernel's nftables notifications (netlink group NFNLGRP_NFTABLES) and,
for every new set or map element, prints `<CLOCK_MONOTONIC seconds> <ipv4>` for each IPv4
address found at the start of the element's key or data whose text starts with --prefix.
CLOCK_MONOTONIC is shared by all processes of the machine, so the parent compares these
times with its own `time.monotonic()`.

With --anywhere (the prefix then names two octets, "10.201."), every nftables
notification (rules, elements, objects) is searched for those two bytes followed by any
two: how rules that carry an address as data are seen (kube-proxy's `dnat to` rules,
iptables-nft's DNAT targets, nftlb's maps). A chance match prints an address nobody
waits for, which the reader ignores.

Why not `nft monitor`: nft loads the whole ruleset, elements included, before it
subscribes and loads it again after every commit; with hundreds of thousands of elements
it never catches up. This reads the notifications alone and costs nothing per commit
beyond parsing them. Read-only: it never sends a request to the kernel.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import sys
import time

__all__ = [
    "NETLINK_ADD_MEMBERSHIP",
    "NETLINK_NETFILTER",
    "NETLINK_NO_ENOBUFS",
    "NFNLGRP_NFTABLES",
    "NFNL_SUBSYS_NFTABLES",
    "NFTA_DATA_VALUE",
    "NFTA_LIST_ELEM",
    "NFTA_SET_ELEM_DATA",
    "NFTA_SET_ELEM_KEY",
    "NFTA_SET_ELEM_LIST_ELEMENTS",
    "NFT_MSG_NEWSETELEM",
    "NLA_TYPE_MASK",
    "SOL_NETLINK",
    "attrs",
    "element_addresses",
    "main",
    "messages",
]

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM = 12
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1
NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")


def attrs(data: bytes | memoryview, start: int, end: int) -> list[tuple[int, int, int]]:
    """(type, payload start, payload end) of the netlink attributes in data[start:end]."""
    out = []
    pos = start
    while pos + 4 <= end:
        length, kind = _NLATTR.unpack_from(data, pos)
        if length < 4:
            break
        out.append((kind & NLA_TYPE_MASK, pos + 4, pos + length))
        pos += (length + 3) & ~3
    return out


def element_addresses(data: bytes, start: int, end: int) -> list[str]:
    """IPv4 addresses at the start of each element's key and data value in a NEWSETELEM."""
    found = []
    for kind, s, e in attrs(data, start, end):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for lkind, ls, le in attrs(data, s, e):
            if lkind != NFTA_LIST_ELEM:
                continue
            for ekind, es, ee in attrs(data, ls, le):
                if ekind not in (NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA):
                    continue
                for vkind, vs, ve in attrs(data, es, ee):
                    if vkind == NFTA_DATA_VALUE and ve - vs >= 4:
                        found.append(socket.inet_ntoa(data[vs : vs + 4]))
    return found


def messages(data: bytes) -> list[tuple[int, int, int]]:
    """(nlmsg type, payload start, end) of each message in one datagram."""
    out = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            break
        out.append((kind, pos + _NLMSGHDR.size, pos + length))
        pos += (length + 3) & ~3
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default="", help="print only addresses starting with this")
    p.add_argument(
        "--anywhere", action="store_true", help="search whole notifications, not elements"
    )
    args = p.parse_args(argv)
    raw: re.Pattern[bytes] | None = None
    if args.anywhere:
        octets = [int(o) for o in args.prefix.strip(".").split(".")]
        if len(octets) != 2:
            p.error("--anywhere needs --prefix with two octets, like 10.201.")
        raw = re.compile(re.escape(bytes(octets)) + b"..", re.DOTALL)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    newsetelem = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
    print("ready", flush=True)
    out = sys.stdout
    try:
        while True:
            data = sock.recv(1 << 20)
            now = time.monotonic()
            lines: list[str] = []
            for kind, start, end in messages(data):
                if raw is not None:
                    if kind >> 8 == NFNL_SUBSYS_NFTABLES:
                        found = {socket.inet_ntoa(m) for m in raw.findall(data, start, end)}
                        lines.extend(f"{now:.6f} {ip}\n" for ip in sorted(found))
                    continue
                if kind != newsetelem:
                    continue
                # After the netlink header: struct nfgenmsg (4 bytes), then attributes.
                for ip in element_addresses(data, start + 4, end):
                    if ip.startswith(args.prefix):
                        lines.append(f"{now:.6f} {ip}\n")
            if lines:
                out.write("".join(lines))
                out.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
