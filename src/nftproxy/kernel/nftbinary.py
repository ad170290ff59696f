"""The fallback backend: the `nft` command, entered into the namespace with nsenter. It
runs text only; what needs netlink sockets (element batches, listings without elements,
notifications) raises Unsupported, and callers fall back as they would for a kernel that
cannot."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from nftproxy.kernel.errors import Unsupported, listed_or_none, raise_for
from nftproxy.kernel.netlink import CommitMonitor, Ours, TableObjects, ruleset_generation
from nftproxy.kernel.netns import netns_path, thread_in
from nftproxy.ruleset.schema import FAMILY, TABLE, SetDef
from nftproxy.ruleset.transaction import Transaction

__all__ = ["NftBinary"]


class NftBinary:
    """The `nft` command, entered into the namespace with `ip netns exec`."""

    def __init__(self, netns: str | None = None, nft: str = "nft") -> None:
        self._prefix = ["nsenter", f"--net={netns_path(netns)}"] if netns else []
        self._nft = nft
        self._pool = thread_in(netns, "nftgen")

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
            raise_for(proc.stderr or proc.stdout or "nft failed", script or " ".join(args))
        return proc.stdout

    def run(self, script: str) -> None:
        self._exec(["-f", "-"], script)

    def check(self, script: str) -> None:
        self._exec(["-c", "-f", "-"], script)

    def list_table(self) -> dict[str, Any] | None:
        return listed_or_none(lambda: self._exec(["-j", "list", "table", FAMILY, TABLE]))

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        kind = "map" if is_map else "set"
        return listed_or_none(lambda: self._exec(["-j", "list", kind, FAMILY, TABLE, name]))

    def apply(
        self, tx: Transaction, sets: Mapping[str, SetDef], *, generation: int | None = None
    ) -> bool:
        """Always nft text: the kernel checks no generation id."""
        self.run(str(tx))
        return False

    def batches(self, tx: Transaction, sets: Mapping[str, SetDef]) -> bool:
        return False

    # Read through the kernel's netlink interface by the libnftables backend only: this
    # one is the fallback that needs nothing but the nft command.

    def objects(self) -> TableObjects | None:
        raise Unsupported("the nft binary backend lists no table objects over netlink")

    def set_elements(self, name: str) -> list[bytes] | None:
        raise Unsupported("the nft binary backend dumps no elements over netlink")

    def dump_sets(self, names: Sequence[str]) -> Mapping[str, Future[list[bytes] | None]]:
        raise Unsupported("the nft binary backend dumps no elements over netlink")

    def monitor(self, ours: Ours | None = None) -> CommitMonitor:
        raise Unsupported("the nft binary backend follows no nftables notifications")

    def forget_caches(self) -> None:
        pass

    def close(self) -> None:
        self._pool.shutdown()
