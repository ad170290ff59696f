"""Netlink sockets to nftables: element batches written without nft's parser (`ElementWriter`,
see encoding), dumps of the table's names and of sets' elements, the generation id, and
commit notifications (`CommitMonitor`). Each socket is made by a thread that entered the
namespace, so it talks to that namespace's nftables whatever thread uses it."""

from __future__ import annotations

import errno as errno_codes
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from nftproxy.kernel.encoding import (
    BE_U32,
    NFNETLINK_V0,
    NFNL_SUBSYS_NFTABLES,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    NLATTR,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGHDR,
    TABLE_FAMILIES,
    Batch,
    ElementType,
    Encoder,
    Reply,
    align,
    attr,
    batch_error,
    name_attr,
    parse_replies,
)
from nftproxy.kernel.errors import NEEDS_NET_ADMIN, NetlinkError
from nftproxy.kernel.netns import netns_path, setns
from nftproxy.ruleset.schema import FAMILY, TABLE
from nftproxy.ruleset.transaction import AddElements, DeleteElements

__all__ = [
    "MAX_NOTIFIED",
    "NFT_SET_ANONYMOUS",
    "NFT_SET_EVAL",
    "NFT_SET_MAP",
    "NFT_SET_TIMEOUT",
    "CommitMonitor",
    "Committed",
    "ElementWriter",
    "Lost",
    "Ours",
    "TableObjects",
    "dump_elements",
    "list_table_objects",
    "ruleset_generation",
]

# linux/netlink.h, linux/netfilter/nfnetlink.h; the socket options of a netfilter socket
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the (large) failed message back
NETLINK_EXT_ACK = 11  # errors carry the kernel's message and the failing attribute's offset
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

# Socket buffers for element batches and notifications, past the sysctl limits where
# CAP_NET_ADMIN allows (a writer grows its send buffer further for a larger batch).
DEFAULT_BUFFER = 16 << 20

# --- the writer --------------------------------------------------------------------------


class ElementWriter:
    """Writes set and map elements into one network namespace's nftables, one atomic batch
    per `write`. Owns a worker thread (which entered the namespace) and its netlink socket."""

    def __init__(
        self, netns: str | None = None, *, buffer: int = DEFAULT_BUFFER, timeout: float = 60.0
    ) -> None:
        if netns is not None and not os.path.exists(netns_path(netns)):
            raise NetlinkError(
                f"network namespace {netns!r} does not exist", errno=errno_codes.ENOENT
            )
        self._buffer = buffer
        self._timeout = timeout
        self._encoder = Encoder()
        self._seq = 0
        self._sndbuf = 0
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="nftnl", initializer=setns, initargs=(netns,)
        )
        try:
            self._sock: socket.socket = self._pool.submit(self._open).result()
        except BaseException:
            self._pool.shutdown()
            raise

    def _open(self) -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        try:
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._grow(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, self._buffer)
            self._sndbuf = self._grow(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, self._buffer)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _grow(sock: socket.socket, opt: int, force: int, size: int) -> int:
        """Set a buffer size, past the sysctl limit when allowed (CAP_NET_ADMIN)."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        return int(sock.getsockopt(socket.SOL_SOCKET, opt))

    def encode(
        self,
        ops: Sequence[AddElements | DeleteElements],
        set_types: Mapping[str, ElementType],
        *,
        table_family: str = FAMILY,
        table: str = TABLE,
        generation: int | None = None,
    ) -> Batch:
        """The batch `write` would send (for measurements and tests)."""
        return self._pool.submit(
            self._encode, ops, set_types, table_family, table, generation
        ).result()

    def _encode(
        self,
        ops: Sequence[AddElements | DeleteElements],
        set_types: Mapping[str, ElementType],
        table_family: str,
        table: str,
        generation: int | None,
    ) -> Batch:
        batch = self._encoder.encode(
            ops,
            set_types,
            table_family=table_family,
            table=table,
            seq=self._seq + 1,
            generation=generation,
        )
        self._seq = (self._seq + len(batch.messages) + 2) & 0x7FFFFFFF
        return batch

    def write(
        self,
        ops: Sequence[AddElements | DeleteElements],
        set_types: Mapping[str, ElementType],
        *,
        table_family: str = FAMILY,
        table: str = TABLE,
        generation: int | None = None,
    ) -> None:
        """Apply `ops` in order as one transaction: all of it, or (on NetlinkError) none.

        `set_types` gives the ElementType of every set the ops name. With `generation`
        (see `ruleset_generation`), the kernel refuses the batch (ERESTART) when the
        ruleset changed since that generation was read.
        """
        self._pool.submit(self._write, ops, set_types, table_family, table, generation).result()

    def _write(
        self,
        ops: Sequence[AddElements | DeleteElements],
        set_types: Mapping[str, ElementType],
        table_family: str,
        table: str,
        generation: int | None,
    ) -> None:
        batch = self._encode(ops, set_types, table_family, table, generation)
        if batch.messages:
            self._send(batch)

    def send(self, batch: Batch) -> None:
        """Send a batch from `encode` and wait for the kernel's verdict on every message."""
        if batch.messages:
            self._pool.submit(self._send, batch).result()

    def _send(self, batch: Batch) -> None:
        sock = self._sock
        self._drain(sock)
        size = len(batch.data)
        if size + 64 > self._sndbuf:  # the kernel refuses a datagram past sndbuf - 32
            self._sndbuf = self._grow(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, size + 4096)
        if size + 64 > self._sndbuf:
            raise NetlinkError(
                f"batch of {size} bytes exceeds the socket send buffer ({self._sndbuf} "
                "bytes; raising it needs CAP_NET_ADMIN): write fewer elements at once",
                errno=errno_codes.EMSGSIZE,
            )
        sock.settimeout(self._timeout)
        try:
            sent = sock.send(batch.data)
        except OSError as exc:  # the kernel did not take the batch: nothing ran
            raise NetlinkError(
                f"sending a batch of {size} bytes: {exc.strerror}; nothing was applied",
                errno=exc.errno or errno_codes.EIO,
            ) from None
        if sent != size:
            raise NetlinkError(
                f"the kernel took {sent} of {size} bytes: the batch's outcome is unknown",
                errno=errno_codes.EIO,
                outcome_unknown=True,
            )
        self._collect(sock, batch)

    def _collect(self, sock: socket.socket, batch: Batch) -> None:
        first = batch.begin_seq + 1
        last = batch.begin_seq + len(batch.messages)
        pending = set(range(first, last + 1))
        errors: list[Reply] = []
        while pending:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                raise NetlinkError(
                    f"no answer for {len(pending)} of {len(batch.messages)} messages after "
                    f"{self._timeout} s: the batch's outcome is unknown",
                    errno=errno_codes.ETIMEDOUT,
                    outcome_unknown=True,
                ) from None
            except OSError as exc:
                if exc.errno == errno_codes.ENOBUFS:
                    raise NetlinkError(
                        "netlink answers were lost (receive buffer overrun): "
                        "the batch's outcome is unknown",
                        errno=errno_codes.ENOBUFS,
                        outcome_unknown=True,
                    ) from None
                raise
            for reply in parse_replies(data):
                if reply.error and reply.seq in (batch.begin_seq, last + 1):
                    # The whole batch was refused (or its commit failed): whatever else
                    # the kernel had to say is already queued.
                    errors.insert(0, reply)
                    errors.extend(r for r in self._drain(sock) if r.error)
                    pending.clear()
                    break
                if reply.seq in pending:
                    pending.discard(reply.seq)
                    if reply.error:
                        errors.append(reply)
        if errors:
            raise batch_error(batch, errors, self._encoder)

    def _drain(self, sock: socket.socket) -> list[Reply]:
        """Whatever is queued on the socket, without waiting."""
        replies: list[Reply] = []
        sock.settimeout(0.0)
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return replies
            except OSError as exc:
                if exc.errno == errno_codes.ENOBUFS:
                    continue
                raise
            replies.extend(parse_replies(data))

    def forget_caches(self) -> None:
        """Drop the encoder's cached protocols, ports and verdicts (they pin memory after
        a large table went away; they come back as needed)."""
        self._pool.submit(self._forget).result()

    def _forget(self) -> None:
        self._encoder = Encoder()

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        try:
            self._pool.submit(self._sock.close).result()
        except RuntimeError:
            # The interpreter is exiting and already stopped the worker: close from here.
            self._sock.close()
        self._pool.shutdown()

    def abandon(self) -> None:
        """`close` for a finalizer: it may run in any thread, at any allocation, even one
        inside ThreadPoolExecutor.submit, whose module-wide lock a submit here would wait
        for forever. So nothing is submitted or waited for: nobody uses the writer any
        more, and a socket may be closed from any thread."""
        self._sock.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ElementWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- listing names without elements --------------------------------------------------------

_NFT_MSG_GETCHAIN = 4
_NFT_MSG_GETRULE = 7
_NFT_MSG_GETSET = 10
_NFT_MSG_GETSETELEM = 13
_NLM_F_DUMP = 0x300
_NLMSG_DONE = 3
_NFPROTO_INET = 1
_NFTA_TABLE = 1  # NFTA_CHAIN_TABLE, NFTA_RULE_TABLE and NFTA_SET_TABLE are all 1
_NFTA_CHAIN_NAME = 3
_NFTA_RULE_CHAIN = 2
_NFTA_SET_NAME = 2
_NFTA_SET_FLAGS = 3
NFT_SET_ANONYMOUS = 0x1
NFT_SET_MAP = 0x8
NFT_SET_TIMEOUT = 0x10
NFT_SET_EVAL = 0x20


@dataclass(frozen=True, slots=True)
class TableObjects:
    """The names in one table, without elements: what a structural check needs."""

    chains: dict[str, int]  # name -> number of rules
    sets: dict[str, int]  # name -> NFT_SET_* flags; named sets only

    @property
    def maps(self) -> set[str]:
        return {n for n, f in self.sets.items() if f & NFT_SET_MAP}

    @property
    def dynamic(self) -> set[str]:
        return {n for n, f in self.sets.items() if f & (NFT_SET_TIMEOUT | NFT_SET_EVAL)}


def _dump(
    sock: socket.socket, msg_type: int, seq: int, select: bytes = b""
) -> Iterable[dict[int, bytes]]:
    """One NLM_F_DUMP request (`select`: attributes naming what to list); yields each
    answer's top-level attributes."""
    body = struct.pack("!BBH", _NFPROTO_INET, NFNETLINK_V0, 0) + select
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    sock.send(
        struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body
    )
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                return
            if mseq == seq:
                if mtype == _NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, offset + 16)
                    if err:
                        raise OSError(-err, f"nftables dump: {os.strerror(-err)}")
                    return
                attrs: dict[int, bytes] = {}
                pos = offset + 20
                end = offset + length
                while pos + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    attrs[atype & 0x3FFF] = data[pos + 4 : pos + alen]
                    pos += align(alen)
                yield attrs
            offset += align(length)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


def list_table_objects(table: str = TABLE) -> TableObjects | None:
    """Chains (with rule counts) and sets of `inet table` in the calling thread's network
    namespace, by netlink dumps that carry no elements, so their cost does not grow with
    the elements. None when the table does not exist."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.settimeout(10.0)
        chains: dict[str, int] = {}
        for attrs in _dump(sock, _NFT_MSG_GETCHAIN, 1):
            if _text(attrs.get(_NFTA_TABLE, b"")) == table:
                chains[_text(attrs[_NFTA_CHAIN_NAME])] = 0
        for attrs in _dump(sock, _NFT_MSG_GETRULE, 2):
            if _text(attrs.get(_NFTA_TABLE, b"")) == table:
                name = _text(attrs[_NFTA_RULE_CHAIN])
                chains[name] = chains.get(name, 0) + 1
        sets: dict[str, int] = {}
        for attrs in _dump(sock, _NFT_MSG_GETSET, 3):
            if _text(attrs.get(_NFTA_TABLE, b"")) == table:
                (flags,) = struct.unpack("!I", attrs.get(_NFTA_SET_FLAGS, b"\0\0\0\0"))
                # Anonymous sets (`__map0`: a rule's inline `vmap { ... }`) belong to their
                # rule and go with it; deleting one by name after a flush fails with ENOENT.
                if not flags & NFT_SET_ANONYMOUS:
                    sets[_text(attrs[_NFTA_SET_NAME])] = flags
    finally:
        sock.close()
    if not chains and not sets:
        return None
    return TableObjects(chains, sets)


def dump_elements(set_name: str, table: str = TABLE) -> list[bytes] | None:
    """Every element of one set of `inet table` in the calling thread's network namespace,
    as the kernel lists it: one NFTA_LIST_ELEM attribute each, padding included (what an
    `Encoder(as_dumped=True)` makes of the same elements). None when there is no such set.

    A netlink dump of raw bytes, nothing parsed: far cheaper in time and memory than nft's
    JSON listing of the same elements.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    select = attr(NFTA_SET_ELEM_LIST_TABLE, name_attr(table))
    select += attr(NFTA_SET_ELEM_LIST_SET, name_attr(set_name))
    out: list[bytes] = []
    unpack = NLATTR.unpack_from
    try:
        sock.settimeout(10.0)
        for attrs in _dump(sock, _NFT_MSG_GETSETELEM, 4, select):
            nest = attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS)
            if not nest:
                continue
            pos, end = 0, len(nest)
            while pos + 4 <= end:
                length = unpack(nest, pos)[0]
                if length < 4:
                    break
                step = (length + 3) & ~3
                out.append(nest[pos : pos + step])
                pos += step
    except FileNotFoundError:
        return None
    finally:
        sock.close()
    return out


# --- watching commits ----------------------------------------------------------------------

_NETLINK_ADD_MEMBERSHIP = 1
_NFNLGRP_NFTABLES = 7
_NFT_MSG_NEWGEN = 15
_NFT_MSG_NEWSETELEM = 12
_NFT_MSG_DELSETELEM = 14
_NFT_MSG_DESTROYSETELEM = 30
_NFTA_GEN_ID = 1
_NFTA_GEN_PROC_PID = 2
_NETLINK_DROP_MEMBERSHIP = 2
_ELEMENT_MESSAGES = frozenset({_NFT_MSG_NEWSETELEM, _NFT_MSG_DELSETELEM, _NFT_MSG_DESTROYSETELEM})


# `ours(generation, pid)`: whether a committed transaction is the caller's own.
Ours = Callable[[int, int], bool]

# Elements of one set recorded per transaction; past it, only the set's name is kept.
MAX_NOTIFIED = 1_000


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed transaction that changed the watched table: the generation id it
    led to, the sets whose elements it changed, whether it changed anything else (the
    table, chains, rules, set definitions), and per set (unless it changed more than
    MAX_NOTIFIED) the elements added (True) and deleted (False) in order, as listed (see
    dump_elements)."""

    generation: int
    sets: frozenset[str]
    other: bool
    elements: Mapping[str, tuple[tuple[bool, bytes], ...]] = field(default_factory=dict)
    # The committing thread's id, as the kernel knows it (unique on the machine).
    pid: int = -1


class Lost(OSError):
    """The kernel dropped notifications (the socket's buffer was full): what changed in
    the meantime is not known."""


class CommitMonitor:
    """nftables' change notifications (netlink group NFNLGRP_NFTABLES), reduced to the
    transactions that touched one table. Like the other sockets here, it belongs to the
    network namespace of the thread that made it and may be read from any thread.

    Every notification names its table; a transaction ends with NFT_MSG_NEWGEN, which
    carries the generation id it led to. Only the table name, the set name of element
    changes and that id are read, and no notification is kept.
    """

    def __init__(
        self,
        table: str = TABLE,
        family: str = FAMILY,
        buffer: int = 8 << 20,
        ours: Ours | None = None,
    ) -> None:
        """`ours(generation, pid)` says whether a transaction is the caller's own: those
        are not reported."""
        self._table = name_attr(table)
        self._family = TABLE_FAMILIES[family]
        self._ours = ours
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        try:
            sock.bind((0, 0))
            ElementWriter._grow(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, buffer)
            sock.setsockopt(SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._sets: set[str] = set()
        self._elements: dict[str, list[tuple[bool, bytes]] | None] = {}
        self._other = False
        self._touched = False

    def _forget(self) -> None:
        self._sets, self._elements, self._other, self._touched = set(), {}, False, False

    def read(self, timeout: float) -> list[Committed]:
        """The transactions that touched the table among the notifications that arrive
        within `timeout` seconds (at least the first one, then what is already there).
        Raises Lost when the kernel had to drop notifications."""
        out: list[Committed] = []
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(1 << 20)
        except TimeoutError:
            return out
        except OSError as exc:
            if exc.errno == errno_codes.ENOBUFS:
                self._forget()
                raise Lost(exc.errno, "nftables notifications were dropped") from None
            raise
        self._parse(data, out)
        return out

    def _parse(self, data: bytes, out: list[Committed]) -> None:
        pos, end = 0, len(data)
        table, family = self._table, self._family
        while pos + 20 <= end:
            length, kind = NLMSGHDR.unpack_from(data, pos)[:2]
            if length < 16:
                break
            if kind >> 8 == NFNL_SUBSYS_NFTABLES:
                message = kind & 0xFF
                if message == _NFT_MSG_NEWGEN:
                    if self._touched:
                        gen = _attribute(data, pos + 20, pos + length, _NFTA_GEN_ID)
                        generation = BE_U32.unpack(gen)[0] if gen is not None else -1
                        pid = _attribute(data, pos + 20, pos + length, _NFTA_GEN_PROC_PID)
                        committer = BE_U32.unpack(pid)[0] if pid is not None else -1
                        if self._ours is None or not self._ours(generation, committer):
                            elements = {
                                n: tuple(e) for n, e in self._elements.items() if e is not None
                            }
                            sets, other = frozenset(self._sets), self._other
                            out.append(Committed(generation, sets, other, elements, committer))
                    self._forget()
                elif data[pos + 16] == family:
                    name = _attribute(data, pos + 20, pos + length, 1)  # NFTA_*_TABLE
                    if name is not None and name.rstrip(b"\0") + b"\0" == table:
                        self._touched = True
                        if message in _ELEMENT_MESSAGES:
                            self._note_elements(data, pos, length, message == _NFT_MSG_NEWSETELEM)
                        else:
                            self._other = True
            pos += align(length)

    def pause(self) -> None:
        """Stop receiving notifications (the kernel then makes none for this listener:
        a generation build commits faster, and nobody parses its notifications)."""
        self._sock.setsockopt(SOL_NETLINK, _NETLINK_DROP_MEMBERSHIP, _NFNLGRP_NFTABLES)

    def resume(self) -> None:
        self._sock.setsockopt(SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)

    def _note_elements(self, data: bytes, pos: int, length: int, added: bool) -> None:
        found = _attribute(data, pos + 20, pos + length, NFTA_SET_ELEM_LIST_SET)
        set_name = _text(found) if found is not None else ""
        self._sets.add(set_name)
        recorded = self._elements.setdefault(set_name, [])
        if recorded is None:
            return
        nest = _attribute(data, pos + 20, pos + length, NFTA_SET_ELEM_LIST_ELEMENTS) or b""
        at = 0
        while at + 4 <= len(nest):
            size = NLATTR.unpack_from(nest, at)[0]
            if size < 4:
                break
            recorded.append((added, nest[at : at + align(size)]))
            at += align(size)
        if len(recorded) > MAX_NOTIFIED:
            self._elements[set_name] = None

    def close(self) -> None:
        self._sock.close()


def _attribute(data: bytes, start: int, end: int, wanted: int) -> bytes | None:
    pos = start
    while pos + 4 <= end:
        length, kind = NLATTR.unpack_from(data, pos)
        if length < 4:
            return None
        if kind & 0x3FFF == wanted:
            return data[pos + 4 : pos + length]
        pos += align(length)
    return None


_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NFTA_GEN_ID = 1


def ruleset_generation() -> int:
    """The kernel's nftables generation id for the calling thread's namespace: it changes
    with every committed transaction, whoever made it. One netlink round trip."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.settimeout(2.0)
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, 0)
        header = struct.pack("=IHHII", 16 + len(body), _NFT_MSG_GETGEN, 1, 1, 0)  # NLM_F_REQUEST
        sock.send(header + body)
        data = sock.recv(65536)
    finally:
        sock.close()
    length, kind = struct.unpack_from("=IH", data)
    if kind == 2:  # NLMSG_ERROR
        (err,) = struct.unpack_from("=i", data, 16)
        if -err == errno_codes.EPERM:
            raise PermissionError(f"{NEEDS_NET_ADMIN}: {os.strerror(-err)}")
        raise OSError(-err, f"nftables generation: {os.strerror(-err)}")
    offset = 16 + 4
    while offset + 4 <= length:
        alen, atype = struct.unpack_from("=HH", data, offset)
        if atype & 0x3FFF == _NFTA_GEN_ID:
            (gen,) = struct.unpack_from("!I", data, offset + 4)
            return int(gen)
        offset += (alen + 3) & ~3
    raise OSError("nftables generation: no NFTA_GEN_ID in the answer")
