"""A tiny server for lab pods, run inside a namespace:

    python -m nftproxy.lab.echo --name NAME [--tcp PORT[,PORT]] [--udp PORT[,PORT]]
        [--echo-tcp PORT[,PORT]] [--show-port] [--max-seconds N]

--tcp:      on each connection write "NAME SOURCE_IP\\n" and close.
--echo-tcp: write the same greeting, then echo every line back until the client closes
            (to check that an established connection survives rule changes).
--udp:      answer each datagram with "NAME SOURCE_IP\\n", from the address it was sent to.

SOURCE_IP is the peer address the server saw (IPv4-mapped IPv6 shown as IPv4), so a test
can tell whether the client was masqueraded. With --show-port, NAME is followed by
":PORT", the port the client reached (after any DNAT), to tell a Service's target ports
apart. Every port listens on IPv4 and IPv6 (IPv6
is skipped with a note when the namespace has none). The server prints "ready" once all
ports listen and exits after --max-seconds (default 600), on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "FAMILIES",
    "IP_PKTINFO",
    "Server",
    "main",
    "peer_ip",
    "serve",
]

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_CMSG_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def peer_ip(addr: tuple[object, ...] | str) -> str:
    """The address part of a peer, IPv4-mapped IPv6 unwrapped."""
    host = addr if isinstance(addr, str) else str(addr[0])
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _ports(text: str) -> list[int]:
    ports = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise argparse.ArgumentTypeError(f"bad port {part!r}")
        ports.append(int(part))
    return ports


def _bind(family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        elif family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_all(kind: socket.SocketKind, port: int) -> list[socket.socket]:
    """One socket per family; IPv6 may be missing in the namespace, IPv4 may not."""
    socks = []
    for family in FAMILIES:
        try:
            socks.append(_bind(family, kind, port))
        except OSError as exc:
            if family == socket.AF_INET:
                for s in socks:
                    s.close()
                raise
            print(f"echo: no IPv6 on port {port}: {exc}", file=sys.stderr)
    return socks


class Server:
    def __init__(self, name: str, show_port: bool = False) -> None:
        self.name = name
        self.greeting_prefix = name.encode()
        self.show_port = show_port

    def greeting(self, peer: tuple[object, ...] | str, local: object = None) -> bytes:
        name = self.greeting_prefix
        if self.show_port and isinstance(local, tuple):
            name += b":%d" % local[1]
        return name + b" " + peer_ip(peer).encode() + b"\n"

    async def hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.greeting(*self._ends(writer)))
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.greeting(*self._ends(writer)))
            await writer.drain()
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (OSError, ValueError):  # ValueError: a line over the reader's limit
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    def _ends(writer: asyncio.StreamWriter) -> tuple[tuple[object, ...], object]:
        return writer.get_extra_info("peername"), writer.get_extra_info("sockname")

    def udp_readable(self, sock: socket.socket) -> None:
        """Answer every queued datagram from the address it was sent to."""
        for _ in range(256):  # bounded: let TCP have a turn under a flood
            try:
                _data, ancdata, _flags, peer = sock.recvmsg(2048, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error for an earlier reply
            reply = self.greeting(peer, sock.getsockname())
            cmsgs = []
            for level, kind, data in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    _ifindex, _spec, dst = _IN_PKTINFO.unpack_from(data)
                    cmsgs.append((level, kind, _IN_PKTINFO.pack(0, dst, bytes(4))))
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    dst6, _ifindex = _IN6_PKTINFO.unpack_from(data)
                    cmsgs.append((level, kind, _IN6_PKTINFO.pack(dst6, 0)))
            try:
                sock.sendmsg([reply], cmsgs, 0, peer)
            except OSError:
                with contextlib.suppress(OSError):  # e.g. sent to a broadcast address
                    sock.sendto(reply, peer)


async def serve(
    name: str,
    tcp: Sequence[int] = (),
    udp: Sequence[int] = (),
    echo_tcp: Sequence[int] = (),
    max_seconds: float = 600.0,
    on_ready: Callable[[], None] | None = None,
    show_port: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    server = Server(name, show_port)
    servers: list[asyncio.Server] = []
    udp_socks: list[socket.socket] = []
    stop = asyncio.Event()
    try:
        for ports, handler in ((tcp, server.hello), (echo_tcp, server.echo)):
            for port in ports:
                for sock in _bind_all(socket.SOCK_STREAM, port):
                    servers.append(await asyncio.start_server(handler, sock=sock, backlog=1024))
        for port in udp:
            for sock in _bind_all(socket.SOCK_DGRAM, port):
                udp_socks.append(sock)
                loop.add_reader(sock.fileno(), server.udp_readable, sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            on_ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    finally:
        for s in servers:
            s.close()
        for sock in udp_socks:
            loop.remove_reader(sock.fileno())
            sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nftproxy.lab.echo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="what to answer with (the pod's name)")
    p.add_argument("--tcp", type=_ports, default=[], help="greet-and-close TCP ports")
    p.add_argument("--udp", type=_ports, default=[], help="UDP ports")
    p.add_argument("--echo-tcp", type=_ports, default=[], help="greet-then-echo TCP ports")
    p.add_argument(
        "--show-port", action="store_true", help="greet with NAME:PORT, the port reached"
    )
    p.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long")
    args = p.parse_args(argv)
    if " " in args.name or "\n" in args.name or not args.name:
        p.error("--name must be one word")
    if not (args.tcp or args.udp or args.echo_tcp):
        p.error("give at least one of --tcp, --udp, --echo-tcp")
    if args.max_seconds <= 0:
        p.error("--max-seconds must be positive")

    def ready() -> None:
        print("ready", flush=True)

    try:
        asyncio.run(
            serve(
                args.name,
                args.tcp,
                args.udp,
                args.echo_tcp,
                args.max_seconds,
                ready,
                show_port=args.show_port,
            )
        )
    except OSError as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
