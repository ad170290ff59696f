"""The addresses of a network namespace's interfaces, read and followed over rtnetlink, for
--nodeport-addresses (docs/ruleset.md, "Which addresses accept NodePorts"). Netlink rather
than `ip -j addr`: no process per read, any namespace, and notifications. Only addresses are
read: not which interface holds them, nor their state or scope."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator

from nftproxy.kernel.encoding import NLM_F_REQUEST, NLMSG_ERROR
from nftproxy.kernel.netns import run_in_netns

__all__ = [
    "IFA_ADDRESS",
    "IFA_LOCAL",
    "NETLINK_ROUTE",
    "NLMSG_DONE",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "RTMGRP_IPV4_IFADDR",
    "RTMGRP_IPV6_IFADDR",
    "RTM_DELADDR",
    "RTM_GETADDR",
    "RTM_NEWADDR",
    "InterfaceAddresses",
    "address_of",
    "messages",
]

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h
NETLINK_ROUTE = 0
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100

_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}
# A dump the kernel marks as interrupted (addresses changed meanwhile) is taken again.
_DUMP_TRIES = 5
# More than one datagram of a dump or a burst of notifications can hold.
_RECV = 1 << 18


def _align(n: int) -> int:
    return (n + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, sequence number, payload) of each netlink message in `data`."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            return
        yield kind, flags, seq, data[pos + _NLMSGHDR.size : pos + length]
        pos += _align(length)


def address_of(payload: bytes) -> str | None:
    """The address an RTM_NEWADDR or RTM_DELADDR payload names (None: not IPv4 or IPv6)."""
    if len(payload) < _IFADDRMSG.size:
        return None
    family = _IFADDRMSG.unpack_from(payload)[0]
    size = _ADDRESS_SIZE.get(family)
    if size is None:
        return None
    found: dict[int, bytes] = {}
    pos = _IFADDRMSG.size
    while pos + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, pos)
        if length < _RTATTR.size:
            break
        if kind in (IFA_ADDRESS, IFA_LOCAL) and length - _RTATTR.size == size:
            found[kind] = payload[pos + _RTATTR.size : pos + length]
        pos += _align(length)
    # IFA_LOCAL is this end of a point-to-point link, where IFA_ADDRESS is the peer's;
    # IPv6 sends IFA_ADDRESS alone for the local address.
    raw = found.get(IFA_LOCAL, found.get(IFA_ADDRESS))
    return None if raw is None else socket.inet_ntop(family, raw)


def _socket(groups: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class InterfaceAddresses:
    """The addresses of the interfaces of one network namespace (None: the caller's),
    loopback included; `wait` says when they may have changed."""

    def __init__(self, netns: str | None = None) -> None:
        self._dump, self._events = run_in_netns(
            netns, lambda: (_socket(), _socket(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        )
        self._dump.settimeout(10.0)  # the kernel answers at once; never hang a sync on it
        self._lock = threading.Lock()  # one dump at a time on the dump socket
        self._seq = 0

    def read(self) -> tuple[str, ...]:
        """Every address now, each once, in the kernel's order (by interface)."""
        with self._lock:
            for _ in range(_DUMP_TRIES):
                found, interrupted = self._dump_once()
                if not interrupted:
                    break
        return tuple(dict.fromkeys(found))

    def _dump_once(self) -> tuple[list[str], bool]:
        self._seq += 1
        seq = self._seq
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(request), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
        )
        self._dump.send(header + request)
        found: list[str] = []
        interrupted = False
        while True:
            data = self._dump.recv(_RECV)
            for kind, flags, mseq, payload in messages(data):
                if mseq != seq:
                    continue  # the answer to an earlier, abandoned dump
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE:
                    return found, interrupted
                if kind == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err:
                        raise OSError(-err, f"listing addresses: {errno.errorcode.get(-err)}")
                    return found, interrupted
                if kind == RTM_NEWADDR and (addr := address_of(payload)) is not None:
                    found.append(addr)

    def wait(self, timeout: float) -> bool:
        """Whether an address was added or removed within `timeout` seconds (whatever
        else is already waiting is read too): `read` again then."""
        changed = False
        self._events.settimeout(timeout)
        while True:
            try:
                data = self._events.recv(_RECV)
            except (TimeoutError, BlockingIOError):
                return changed
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return True  # the kernel dropped some: anything may have changed
                raise
            changed = changed or any(
                kind in (RTM_NEWADDR, RTM_DELADDR) for kind, *_ in messages(data)
            )
            # Then only what is there already: a burst of changes is one read.
            self._events.setblocking(False)

    def close(self) -> None:
        self._dump.close()
        self._events.close()
