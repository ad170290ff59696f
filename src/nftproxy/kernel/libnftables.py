"""The libnftables backend: libnftables.so.1 in-process through ctypes for nft text, and
netlink sockets for element batches, listings, the generation id and notifications.

libnftables opens its netlink socket in the calling thread's namespace, so the backend owns
one worker thread that entered the namespace once; the rest of the process is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from nftproxy.kernel.encoding import transaction_types
from nftproxy.kernel.errors import NftError, listed_or_none, raise_for
from nftproxy.kernel.netlink import (
    CommitMonitor,
    ElementWriter,
    Ours,
    TableObjects,
    dump_elements,
    list_table_objects,
    ruleset_generation,
)
from nftproxy.kernel.netns import setns, thread_in
from nftproxy.ruleset.schema import FAMILY, TABLE, SetDef
from nftproxy.ruleset.transaction import AddElements, DeleteElements, Transaction

__all__ = ["LibNftables"]

_OUTPUT_JSON = 1 << 4


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
        self._pool = thread_in(netns, "nft")
        self._ctx: int = self._pool.submit(self._new_ctx).result()
        self._netns = netns
        self._writer: ElementWriter | None = None
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
            raise_for(err or "nft failed", script)
        return out

    def run(self, script: str) -> None:
        self._pool.submit(self._run, script).result()

    def check(self, script: str) -> None:
        self._pool.submit(self._run, script, dry_run=True).result()

    def list_table(self) -> dict[str, Any] | None:
        return self._listing(f"list table {FAMILY} {TABLE}")

    def _listing(self, command: str) -> dict[str, Any] | None:
        """A `list` command's JSON; None when what it lists does not exist."""
        return listed_or_none(lambda: self._pool.submit(self._run, command, json_out=True).result())

    def generation(self) -> int:
        return self._pool.submit(ruleset_generation).result()

    def objects(self) -> TableObjects | None:
        """Chain and set names of our table without elements (see netlink.list_table_objects)."""
        return self._pool.submit(list_table_objects).result()

    def set_elements(self, name: str) -> list[bytes] | None:
        """One set's elements as the kernel lists them (see netlink.dump_elements)."""
        return self._pool.submit(dump_elements, name).result()

    def monitor(self, ours: Ours | None = None) -> CommitMonitor:
        """A netlink.CommitMonitor of our table in this backend's namespace."""
        return self._pool.submit(lambda: CommitMonitor(ours=ours)).result()

    def dump_sets(self, names: Sequence[str]) -> dict[str, Future[list[bytes] | None]]:
        """Start listing these sets' elements (see set_elements), two at a time, in threads
        of their own: a large dump is mostly the kernel's work, which the caller's can
        overlap."""
        if self._dumpers is None:
            self._dumpers = ThreadPoolExecutor(
                max_workers=2,
                thread_name_prefix="nftdump",
                initializer=setns,
                initargs=(self._netns,),
            )
        return {name: self._dumpers.submit(dump_elements, name) for name in names}

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        """`nft -j list set|map` of one set of our table; None when it does not exist."""
        kind = "map" if is_map else "set"
        return self._listing(f"list {kind} {FAMILY} {TABLE} {name}")

    def apply(
        self, tx: Transaction, sets: Mapping[str, SetDef], *, generation: int | None = None
    ) -> bool:
        """One transaction: elements-only ones whose sets are all fixed-size go straight
        to the kernel as one netlink batch (for large transactions nft's parser is most
        of the cost), anything else as nft text. With `generation`, a batch
        is refused by the kernel (NetlinkError, ERESTART) unless that is its generation
        id; True when it went that way, so that the id is now exactly one higher."""
        types = transaction_types(tx, sets)
        if types is None:
            self.run(str(tx))
            return False
        if self._writer is None:
            self._writer = ElementWriter(self._netns)
            # Its socket and thread go with this backend, closed or merely dropped.
            weakref.finalize(self, self._writer.abandon)
        ops = [op for op in tx.ops if isinstance(op, AddElements | DeleteElements)]
        self._writer.write(ops, types, generation=generation)
        return generation is not None

    def batches(self, tx: Transaction, sets: Mapping[str, SetDef]) -> bool:
        return transaction_types(tx, sets) is not None

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
