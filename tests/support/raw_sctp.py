"""SCTP packets for kernels without SCTP sockets: INIT chunks sent and caught with raw sockets.

This kernel is built without the SCTP stack (CONFIG_IP_SCTP unset) but with SCTP conntrack
and NAT, so a Service's SCTP rules still act on real packets. A probe is one INIT chunk,
sent from a lab namespace through a raw IPv4 socket; every pod listens with a raw socket
(which also keeps its kernel from answering "protocol unreachable"), so the pod that gets
it, the port it reached and the source it saw are known. The answer is a lab `Result`, as
`Lab.connect` gives: replies "NAME:PORT SOURCE", and probes nobody caught as timeouts.
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import struct
import time
from collections.abc import Iterable
from typing import NamedTuple

from nftproxy.lab import Lab, Pod, Result, run_in_netns

IPPROTO_SCTP = 132
_CRC32C = 0x82F63B78  # Castagnoli, reflected


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def init_chunk(src_port: int, dst_port: int, tag: int) -> bytes:
    """An SCTP packet holding one INIT chunk whose initiate tag is `tag`."""
    init = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, tag)
    header = struct.pack("!HHII", src_port, dst_port, 0, 0)
    # The checksum is the CRC32c of the packet with the field zeroed, stored little-endian
    # (RFC 9260, appendix A); conntrack checks it and drops the packet when it is wrong.
    checksum = struct.pack("<I", crc32c(header + init))
    return header[:8] + checksum + init


class Caught(NamedTuple):
    source: str
    port: int
    tag: int


def parse(packet: bytes) -> Caught | None:
    """An INIT chunk in an IPv4 packet (as raw IPv4 sockets receive them, header included)."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sctp = packet[ihl:]
    if len(sctp) < 32 or sctp[12] != 1:
        return None
    _sport, dport = struct.unpack("!HH", sctp[:4])
    (tag,) = struct.unpack("!I", sctp[16:20])
    return Caught(str(ipaddress.IPv4Address(packet[12:16])), dport, tag)


def probe(
    lab: Lab,
    who: str,
    dest: str,
    port: int,
    count: int,
    *,
    source: str | None = None,
    wait: float = 1.0,
) -> Result:
    """`count` INIT chunks from `who` to dest:port, each its own association (a fresh source
    port and tag), caught in every pod of the lab."""
    if ipaddress.ip_address(dest).version != 4:
        raise ValueError("raw SCTP probes are IPv4 only")
    listeners = {pod.name: _listener(lab, pod) for pod in lab.topology.pods}
    sender = run_in_netns(
        lab.ns_path(who), lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    )
    result = Result()
    start = time.monotonic()
    try:
        if source is not None:
            sender.bind((source, 0))
        tags = {}
        for _ in range(count):
            tag = secrets.randbits(31) + 1
            tags[tag] = None
            sport = 1024 + secrets.randbelow(60000)
            sender.sendto(init_chunk(sport, port, tag), (dest, 0))
        for name, caught in _collect(listeners, wait):
            if caught.tag in tags and tags[caught.tag] is None:
                tags[caught.tag] = name
                result.replies[f"{name}:{caught.port} {caught.source}"] += 1
        result.timeouts = sum(1 for v in tags.values() if v is None)
    finally:
        sender.close()
        for sock in listeners.values():
            sock.close()
    result.elapsed = time.monotonic() - start
    return result


def _listener(lab: Lab, pod: Pod) -> socket.socket:
    sock = run_in_netns(
        lab.ns_path(pod), lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    )
    sock.setblocking(False)
    return sock


def _collect(listeners: dict[str, socket.socket], wait: float) -> Iterable[tuple[str, Caught]]:
    """What the listeners catch until none has caught anything for `wait` seconds."""
    by_fd = {sock.fileno(): name for name, sock in listeners.items()}
    socks = {sock.fileno(): sock for sock in listeners.values()}
    while True:
        readable, _, _ = select.select(list(socks), [], [], wait)
        if not readable:
            return
        for fd in readable:
            with_packet = parse(socks[fd].recv(65535))
            if with_packet is not None:
                yield by_fd[fd], with_packet
