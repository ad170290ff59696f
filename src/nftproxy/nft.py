"""Talking to the kernel: libnftables in-process (ctypes), or the `nft` binary as a fallback.

Both run inside a chosen network namespace. libnftables opens its netlink socket in the
calling thread's namespace, so each backend owns one worker thread that entered the
namespace once (setns is per thread for CLONE_NEWNET); the rest of the process is untouched.
nft errors are classified here, once, and the original text is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import struct
import subprocess
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from nftproxy.ruleset.schema import FAMILY, TABLE

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_OUTPUT_JSON = 1 << 4
_OUTPUT_HANDLE = 1 << 3


class NftError(Exception):
    """nft refused a command. `kind` is not-found, exists, permission or rejected."""

    def __init__(self, message: str, *, kind: str = "rejected") -> None:
        super().__init__(message)
        self.kind = kind


def _classify(text: str) -> str:
    if "No such file or directory" in text:
        return "not-found"
    if "File exists" in text:
        return "exists"
    if "Operation not permitted" in text or "Permission denied" in text:
        return "permission"
    return "rejected"


# What the kernel wants for each of our operations; named when it refuses for lack of it.
NEEDS_NET_ADMIN = "needs root (CAP_NET_ADMIN) to read or change nftables"
NEEDS_SYS_ADMIN = "needs root (CAP_SYS_ADMIN) to enter network namespace"


def _raise_for(text: str, script: str) -> None:
    if _classify(text) == "permission":
        # One line: the script is no help to whoever lacks the privilege.
        raise NftError(f"{NEEDS_NET_ADMIN}: Operation not permitted", kind="permission")
    lines = script.splitlines()
    excerpt = "\n".join(line[:300] for line in lines[:5])
    more = f"\n... ({len(lines)} lines)" if len(lines) > 5 else ""
    raise NftError(f"{text.strip()}\nwhile running:\n{excerpt}{more}", kind=_classify(text))


_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NFTA_GEN_ID = 1


def ruleset_generation() -> int:
    """The kernel's nftables generation id for the calling thread's namespace: it changes
    with every committed transaction, whoever made it. One netlink round trip."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
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
        if -err == errno.EPERM:
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


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


class Backend(Protocol):
    """What the applier needs from the kernel side."""

    def run(self, script: str) -> None: ...

    def check(self, script: str) -> None: ...

    def list_table(self) -> dict[str, Any] | None: ...


def call_in_netns(netns: str | None, make: Callable[[], T]) -> T:
    """`make()` run by a short-lived thread that entered `netns` (None: this one), so that
    what it creates, a listening socket say, belongs to that namespace."""
    if netns is None:
        return make()
    box: list[Any] = []

    def run() -> None:
        try:
            _setns(netns)
            box.append((True, make()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name=f"in-{netns}")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _setns(netns: str | None) -> None:
    if netns is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise PermissionError(f"{NEEDS_SYS_ADMIN} {netns}: {os.strerror(err)}")
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _thread_in(netns: str | None, name: str) -> ThreadPoolExecutor:
    """One worker thread inside `netns`, every call after the first running in it.

    Entered by a first task rather than an initializer: a failing initializer only breaks
    the pool, with a traceback on stderr, and loses the reason (no privilege, say)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        pool.submit(_setns, netns).result()
    except BaseException:
        pool.shutdown(wait=False)
        raise
    return pool


class LibNftables:
    """libnftables.so.1 through ctypes, one context per backend in its own thread."""

    def __init__(self, netns: str | None = None) -> None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        self._lib = ctypes.CDLL(path)
        lib = self._lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._pool = _thread_in(netns, "nft")
        self._ctx: int = self._pool.submit(self._new_ctx).result()
        self._netns = netns
        self._writer: Any = None
        self._dumpers: ThreadPoolExecutor | None = None

    def _new_ctx(self) -> int:
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def _run(self, script: str, *, json_out: bool = False, dry_run: bool = False) -> str:
        lib, ctx = self._lib, self._ctx
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON if json_out else 0)
        lib.nft_ctx_set_dry_run(ctx, dry_run)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if rc != 0:
            _raise_for(err or "nft failed", script)
        return out

    def run(self, script: str) -> None:
        self._pool.submit(self._run, script).result()

    def check(self, script: str) -> None:
        self._pool.submit(self._run, script, dry_run=True).result()

    def list_table(self) -> dict[str, Any] | None:
        return self._listing(f"list table {FAMILY} {TABLE}")

    def _listing(self, command: str) -> dict[str, Any] | None:
        """A `list` command's JSON; None when what it lists does not exist."""
        try:
            out = self._pool.submit(self._run, command, json_out=True).result()
        except NftError as exc:
            if exc.kind == "not-found":
                return None
            raise
        doc: dict[str, Any] = json.loads(out)
        return doc

    def generation(self) -> int:
        return self._pool.submit(ruleset_generation).result()

    def objects(self) -> Any:
        """Chain and set names of our table without elements (see netlink)."""
        from nftproxy.netlink import list_table_objects

        return self._pool.submit(list_table_objects).result()

    def set_elements(self, name: str) -> list[bytes] | None:
        """One set's elements as the kernel lists them (see netlink.dump_elements)."""
        from nftproxy.netlink import dump_elements

        return self._pool.submit(dump_elements, name).result()

    def monitor(self, ours: Any = None) -> Any:
        """A netlink.CommitMonitor of our table in this backend's namespace."""
        from nftproxy.netlink import CommitMonitor

        return self._pool.submit(lambda: CommitMonitor(ours=ours)).result()

    def dump_sets(self, names: Sequence[str]) -> dict[str, Future[list[bytes] | None]]:
        """Start listing these sets' elements (see set_elements), two at a time, in threads
        of their own: a large dump is mostly the kernel's work, which the caller's can
        overlap."""
        from nftproxy.netlink import dump_elements

        if self._dumpers is None:
            self._dumpers = ThreadPoolExecutor(
                max_workers=2,
                thread_name_prefix="nftdump",
                initializer=_setns,
                initargs=(self._netns,),
            )
        return {name: self._dumpers.submit(dump_elements, name) for name in names}

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        """`nft -j list set|map` of one set of our table; None when it does not exist."""
        kind = "map" if is_map else "set"
        return self._listing(f"list {kind} {FAMILY} {TABLE} {name}")

    def write_elements(
        self, ops: Sequence[Any], set_types: Mapping[str, Any], *, generation: int | None = None
    ) -> None:
        """Elements straight to the kernel as one netlink batch (see nftproxy.netlink): at
        hundreds of thousands of elements nft's parser is most of the cost. With
        `generation`, the kernel refuses the batch unless that is its generation id."""
        from nftproxy.netlink import ElementWriter

        if self._writer is None:
            self._writer = ElementWriter(self._netns)
            # Its socket and thread go with this backend, closed or merely dropped.
            weakref.finalize(self, self._writer.abandon)
        self._writer.write(ops, set_types, generation=generation)

    def forget_caches(self) -> None:
        """Let go of memory kept for speed (see ElementWriter.forget_caches)."""
        if self._writer is not None:
            self._writer.forget_caches()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._dumpers is not None:
            self._dumpers.shutdown()

        def free() -> None:
            self._lib.nft_ctx_free(self._ctx)

        self._pool.submit(free).result()
        self._pool.shutdown()


class NftBinary:
    """The `nft` command, entered into the namespace with `ip netns exec`."""

    def __init__(self, netns: str | None = None, nft: str = "nft") -> None:
        self._prefix = ["nsenter", f"--net={netns_path(netns)}"] if netns else []
        self._nft = nft
        self._pool = _thread_in(netns, "nftgen")

    def generation(self) -> int:
        return self._pool.submit(ruleset_generation).result()

    def _exec(self, args: list[str], script: str | None = None) -> str:
        proc = subprocess.run(
            [*self._prefix, self._nft, *args],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            _raise_for(proc.stderr or proc.stdout or "nft failed", script or " ".join(args))
        return proc.stdout

    def run(self, script: str) -> None:
        self._exec(["-f", "-"], script)

    def check(self, script: str) -> None:
        self._exec(["-c", "-f", "-"], script)

    def list_table(self) -> dict[str, Any] | None:
        try:
            out = self._exec(["-j", "list", "table", FAMILY, TABLE])
        except NftError as exc:
            if exc.kind == "not-found":
                return None
            raise
        doc: dict[str, Any] = json.loads(out)
        return doc

    def close(self) -> None:
        self._pool.shutdown()


def open_backend(netns: str | None = None, *, prefer: str = "auto") -> LibNftables | NftBinary:
    """libnftables when it loads, else the nft binary (prefer: auto, lib or binary)."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise NftError(f"network namespace {netns!r} does not exist", kind="not-found")
    if prefer in ("auto", "lib"):
        try:
            return LibNftables(netns)
        except OSError:
            if prefer == "lib":
                raise
    return NftBinary(netns)
