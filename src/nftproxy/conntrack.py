"""Deleting the conntrack entries that keep UDP clients away from a Service, over raw
ctnetlink (which entries, and why: README, "The daemon"; which ones a sync makes stale:
proxier.stale_udp_endpoints), and setting the namespace's conntrack timeouts. Netlink
sockets belong to the namespace they were made in: the functions here work in the calling
thread's, `ConntrackCleaner` owns a worker thread that entered one."""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeAlias

from nftproxy.kernel.netns import netns_path, setns

__all__ = [
    "CTA_IP_V4_DST",
    "CTA_IP_V4_SRC",
    "CTA_IP_V6_DST",
    "CTA_IP_V6_SRC",
    "CTA_PROTO_DST_PORT",
    "CTA_PROTO_NUM",
    "CTA_PROTO_SRC_PORT",
    "CTA_TUPLE_IP",
    "CTA_TUPLE_ORIG",
    "CTA_TUPLE_PROTO",
    "CTA_TUPLE_REPLY",
    "CTA_ZONE",
    "IPCTNL_MSG_CT_DELETE",
    "IPCTNL_MSG_CT_GET",
    "NETLINK_NETFILTER",
    "NFNETLINK_V0",
    "NFNL_SUBSYS_CTNETLINK",
    "NLA_F_NESTED",
    "NLA_TYPE_MASK",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "PROTOCOLS",
    "ConnTuple",
    "ConntrackCleaner",
    "ConntrackError",
    "ConntrackSettings",
    "Family",
    "Flow",
    "ProtoName",
    "Stale",
    "apply_settings",
    "attributes",
    "clear_stale",
    "delete_flows",
    "encode_orig",
    "list_flows",
    "parse_tuple",
]

# --- constants (linux/netlink.h, linux/netfilter/nfnetlink*.h) ---------------------------
#
# As checked on the wire: a message's type is NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*,
# and after the nlmsghdr comes a struct nfgenmsg whose family (AF_INET or AF_INET6) makes a
# dump list only that family's entries. Deleting an entry that is already gone answers
# ENOENT.

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNETLINK_V0 = 0

NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
# The kernel sets NLA_F_NESTED on the nests it sends; it is masked off when parsing.
NLA_F_NESTED = 1 << 15
NLA_TYPE_MASK = 0x3FFF

# The original and reply tuples are nests of an IP nest (addresses: 4 or 16 bytes) and a
# protocol nest (CTA_PROTO_NUM: one byte; ports: big-endian u16).
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
# Big-endian u16, only present for a non-default zone. Deleting an entry of another zone
# needs it, so it is sent back when it was there.
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3

Family: TypeAlias = Literal[4, 6]
ProtoName: TypeAlias = Literal["udp", "tcp", "sctp"]

PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
_AF: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
_IP_ATTRS: dict[int, tuple[int, int]] = {
    4: (CTA_IP_V4_SRC, CTA_IP_V4_DST),
    6: (CTA_IP_V6_SRC, CTA_IP_V6_DST),
}

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("!BBH")
_BE16 = struct.Struct("!H")
_RECV_SIZE = 1 << 20

_seq = itertools.count(1)


class ConntrackError(OSError):
    """The kernel refused a ctnetlink request."""


# --- flows -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """One conntrack entry, by its original and reply tuples.

    For a DNATed flow the original destination is the Service frontend and the reply source
    the endpoint it was sent to; for a flow that was not NATed both are the same."""

    orig_src: str
    orig_sport: int
    orig_dst: str
    orig_dport: int
    reply_src: str
    reply_sport: int
    proto: int
    family: Family
    zone: int = 0


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    pad = bytes(_align(len(payload)) - len(payload))
    return _NLATTR.pack(4 + len(payload), kind) + payload + pad


def _nest(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def attributes(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> dict[int, bytes]:
    """The attributes in data[start:end], by type (nested flag masked off)."""
    end = len(data) if end is None else end
    out: dict[int, bytes] = {}
    pos = start
    while pos + 4 <= end:
        alen, atype = _NLATTR.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = bytes(data[pos + 4 : pos + alen])
        pos += _align(alen)
    return out


@dataclass(frozen=True, slots=True)
class ConnTuple:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int


def parse_tuple(raw: bytes, family: Family) -> ConnTuple | None:
    top = attributes(raw)
    ip = attributes(top.get(CTA_TUPLE_IP, b""))
    proto = attributes(top.get(CTA_TUPLE_PROTO, b""))
    src_attr, dst_attr = _IP_ATTRS[family]
    if src_attr not in ip or dst_attr not in ip or CTA_PROTO_NUM not in proto:
        return None
    af = _AF[family]
    sport = _BE16.unpack(proto[CTA_PROTO_SRC_PORT])[0] if CTA_PROTO_SRC_PORT in proto else 0
    dport = _BE16.unpack(proto[CTA_PROTO_DST_PORT])[0] if CTA_PROTO_DST_PORT in proto else 0
    return ConnTuple(
        socket.inet_ntop(af, ip[src_attr]),
        socket.inet_ntop(af, ip[dst_attr]),
        sport,
        dport,
        proto[CTA_PROTO_NUM][0],
    )


def _parse_flow(attrs: dict[int, bytes], family: Family) -> Flow | None:
    if CTA_TUPLE_ORIG not in attrs or CTA_TUPLE_REPLY not in attrs:
        return None
    orig = parse_tuple(attrs[CTA_TUPLE_ORIG], family)
    reply = parse_tuple(attrs[CTA_TUPLE_REPLY], family)
    if orig is None or reply is None:
        return None
    zone = _BE16.unpack(attrs[CTA_ZONE])[0] if len(attrs.get(CTA_ZONE, b"")) >= 2 else 0
    return Flow(
        orig.src, orig.sport, orig.dst, orig.dport, reply.src, reply.sport, orig.proto, family, zone
    )


def encode_orig(flow: Flow) -> bytes:
    af = _AF[flow.family]
    src_attr, dst_attr = _IP_ATTRS[flow.family]
    ip = _attr(src_attr, socket.inet_pton(af, flow.orig_src)) + _attr(
        dst_attr, socket.inet_pton(af, flow.orig_dst)
    )
    proto = _attr(CTA_PROTO_NUM, bytes([flow.proto]))
    if flow.proto in PROTOCOLS.values():
        proto += _attr(CTA_PROTO_SRC_PORT, _BE16.pack(flow.orig_sport))
        proto += _attr(CTA_PROTO_DST_PORT, _BE16.pack(flow.orig_dport))
    body = _nest(CTA_TUPLE_ORIG, _nest(CTA_TUPLE_IP, ip) + _nest(CTA_TUPLE_PROTO, proto))
    if flow.zone:
        body += _attr(CTA_ZONE, _BE16.pack(flow.zone))
    return body


# --- the socket --------------------------------------------------------------------------


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.settimeout(5.0)
    sock.bind((0, 0))
    return sock


def _message(msg_type: int, flags: int, seq: int, family: Family, body: bytes) -> bytes:
    payload = _NFGENMSG.pack(_AF[family], NFNETLINK_V0, 0) + body
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload


def _dump(sock: socket.socket, family: Family) -> Iterator[dict[int, bytes]]:
    seq = next(_seq)
    sock.send(_message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family, b""))
    while True:
        data = sock.recv(_RECV_SIZE)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                return
            if mseq == seq:
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, offset + 16)
                    if err:
                        raise ConntrackError(-err, f"conntrack dump: {os.strerror(-err)}")
                    return
                yield attributes(data, offset + 20, offset + length)
            offset += _align(length)


def _delete(sock: socket.socket, flow: Flow) -> bool:
    """Delete one entry; False when it was already gone."""
    seq = next(_seq)
    flags = NLM_F_REQUEST | NLM_F_ACK
    sock.send(_message(IPCTNL_MSG_CT_DELETE, flags, seq, flow.family, encode_orig(flow)))
    while True:
        data = sock.recv(_RECV_SIZE)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            if mseq == seq and mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, offset + 16)
                if err == 0:
                    return True
                if -err == errno_codes.ENOENT:
                    return False
                raise ConntrackError(-err, f"conntrack delete {flow}: {os.strerror(-err)}")
            offset += _align(length)


def _proto_number(proto: str | int | None) -> int | None:
    if proto is None or isinstance(proto, int):
        return proto
    try:
        return PROTOCOLS[proto]
    except KeyError:
        raise ValueError(f"unknown protocol {proto!r}") from None


# --- the API -----------------------------------------------------------------------------


def list_flows(proto: str | int | None = "udp", family: Family = 4) -> list[Flow]:
    """The conntrack entries of one address family in the calling thread's namespace,
    of one L4 protocol (a name, a number, or None for all)."""
    number = _proto_number(proto)
    with _open() as sock:
        flows = (_parse_flow(attrs, family) for attrs in _dump(sock, family))
        return [f for f in flows if f is not None and (number is None or f.proto == number)]


def delete_flows(flows: Iterable[Flow]) -> int:
    """Delete entries by their original tuple, in the calling thread's namespace; returns
    how many were deleted (one already gone is skipped, not an error)."""
    deleted = 0
    with _open() as sock:
        for flow in flows:
            deleted += _delete(sock, flow)
    return deleted


def _normal(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


@dataclass(frozen=True, slots=True)
class Stale:
    """Flows to delete: sent to a frontend, answered by an endpoint that is gone.

    frontend_ip None is a NodePort: any destination address at frontend_port.
    endpoint_port None matches any reply source port. endpoint_ip None selects the flows
    that were not NATed (reply source == original destination, address and port): those a
    Service that had no endpoints left behind, to delete when it gets some. Such a rule for
    a NodePort has no address at all, and names its family instead."""

    frontend_ip: str | None
    frontend_port: int
    endpoint_ip: str | None
    endpoint_port: int | None = None
    proto: ProtoName = "udp"
    nodeport_family: Family | None = None
    # With endpoint_ip None: the flows toward the frontend answered by anything but these
    # (address, port) pairs, the un-NATed ones included. What a full sync asks, knowing
    # only what each frontend has now (kube-proxy's reconciler does the same).
    keep: frozenset[tuple[str, int]] | None = None

    def __post_init__(self) -> None:
        if self.frontend_ip is not None:
            object.__setattr__(self, "frontend_ip", _normal(self.frontend_ip))
        if self.endpoint_ip is not None:
            object.__setattr__(self, "endpoint_ip", _normal(self.endpoint_ip))
        if self.keep is not None:
            if self.endpoint_ip is not None:
                raise ValueError(f"{self}: keep is for a rule without an endpoint")
            object.__setattr__(self, "keep", frozenset((_normal(ip), p) for ip, p in self.keep))
        families = {6 if ":" in ip else 4 for ip in (self.frontend_ip, self.endpoint_ip) if ip}
        if self.nodeport_family is not None:
            if self.frontend_ip is not None or families - {self.nodeport_family}:
                raise ValueError(f"{self}: nodeport_family is for a NodePort (no frontend address)")
            families.add(self.nodeport_family)
        if len(families) != 1:
            raise ValueError(f"{self}: needs a frontend or an endpoint address, of one family")
        _proto_number(self.proto)

    @property
    def family(self) -> Family:
        if self.nodeport_family is not None:
            return self.nodeport_family
        ip = self.frontend_ip or self.endpoint_ip or ""
        return 6 if ":" in ip else 4

    def matches(self, flow: Flow) -> bool:
        if flow.family != self.family or flow.proto != PROTOCOLS[self.proto]:
            return False
        if flow.orig_dport != self.frontend_port:
            return False
        if self.frontend_ip is not None and flow.orig_dst != self.frontend_ip:
            return False
        if self.keep is not None:
            return (flow.reply_src, flow.reply_sport) not in self.keep
        if self.endpoint_ip is None:
            return flow.reply_src == flow.orig_dst and flow.reply_sport == flow.orig_dport
        if flow.reply_src != self.endpoint_ip:
            return False
        return self.endpoint_port is None or flow.reply_sport == self.endpoint_port


def clear_stale(rules: Sequence[Stale]) -> int:
    """Delete the entries any rule matches, in the calling thread's namespace (one dump per
    family and protocol in use); returns how many were deleted."""
    doomed: list[Flow] = []
    for family, proto in sorted({(r.family, r.proto) for r in rules}):
        # By destination port: a full sync asks about every UDP frontend at once.
        by_port: dict[int, list[Stale]] = {}
        for r in rules:
            if r.family == family and r.proto == proto:
                by_port.setdefault(r.frontend_port, []).append(r)
        doomed += [
            f
            for f in list_flows(proto, family)
            if any(r.matches(f) for r in by_port.get(f.orig_dport, ()))
        ]
    return delete_flows(doomed) if doomed else 0


# --- the conntrack timeouts kube-proxy sets (per network namespace) ------------------------

_SYSCTL_DIR = "/proc/sys/net/netfilter"


@dataclass(frozen=True, slots=True)
class ConntrackSettings:
    """kube-proxy's ``conntrack`` options that live in the network namespace it serves:
    timeouts in seconds (0: leave the kernel's value) and TCP liberal mode (False: leave).
    Defaults are kube-proxy's. ``maxPerCore``/``min`` are not here: ``nf_conntrack_max`` is
    machine-wide (read-only outside the initial namespace), a node setting."""

    tcp_established: int = 24 * 3600
    tcp_close_wait: int = 3600
    tcp_be_liberal: bool = False
    udp: int = 0
    udp_stream: int = 0

    def wanted(self) -> dict[str, int]:
        """sysctl (under net/netfilter) -> value, for the settings that ask for a change."""
        out = {
            "nf_conntrack_tcp_timeout_established": self.tcp_established,
            "nf_conntrack_tcp_timeout_close_wait": self.tcp_close_wait,
            "nf_conntrack_udp_timeout": self.udp,
            "nf_conntrack_udp_timeout_stream": self.udp_stream,
            "nf_conntrack_tcp_be_liberal": int(self.tcp_be_liberal),
        }
        return {k: v for k, v in out.items() if v > 0}


def apply_settings(settings: ConntrackSettings) -> dict[str, tuple[int, int]]:
    """Write the settings to the calling thread's network namespace, as kube-proxy does at
    start: only values that differ. Returns sysctl -> (old, new) for what changed."""
    changed: dict[str, tuple[int, int]] = {}
    for name, value in settings.wanted().items():
        path = os.path.join(_SYSCTL_DIR, name)
        with open(path) as f:
            old = int(f.read().split()[0])
        if old != value:
            with open(path, "w") as f:
                f.write(f"{value}\n")
            changed[name] = (old, value)
    return changed


class ConntrackCleaner:
    """`clear_stale` and friends in one network namespace (None: the process's own), from a
    worker thread that entered it once; any thread may call."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        if netns is not None:
            os.stat(netns_path(netns))  # FileNotFoundError, rather than a broken pool
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="conntrack", initializer=setns, initargs=(netns,)
        )
        # Enter now, so a namespace that does not exist fails here rather than later.
        self._pool.submit(lambda: None).result()

    def __repr__(self) -> str:
        return f"ConntrackCleaner({self._netns!r})"

    def list_flows(self, proto: str | int | None = "udp", family: Family = 4) -> list[Flow]:
        return self._pool.submit(list_flows, proto, family).result()

    def delete_flows(self, flows: Iterable[Flow]) -> int:
        return self._pool.submit(delete_flows, list(flows)).result()

    def clear_stale(self, rules: Sequence[Stale]) -> int:
        if not rules:
            return 0
        return self._pool.submit(clear_stale, list(rules)).result()

    def apply_settings(self, settings: ConntrackSettings) -> dict[str, tuple[int, int]]:
        return self._pool.submit(apply_settings, settings).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> ConntrackCleaner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
