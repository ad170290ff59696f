"""The one edge to nftables: `Backend`, everything nftproxy asks of the kernel's nftables
in one network namespace, and `open_backend` to get one. Implementations: LibNftables (the
daemon's), NftBinary (the fallback), FakeBackend (in memory, for fast tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from nftproxy.kernel.errors import NftError
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.kernel.netlink import CommitMonitor, Ours, TableObjects
from nftproxy.kernel.netns import netns_path
from nftproxy.kernel.nftbinary import NftBinary
from nftproxy.ruleset.schema import SetDef
from nftproxy.ruleset.transaction import Transaction

__all__ = ["Backend", "Dumps", "open_backend"]

Dumps = Mapping[str, "Future[list[bytes] | None]"]


class Backend(Protocol):
    """nftables in one network namespace. What a backend cannot do raises Unsupported
    (from errors); refusals are NftError."""

    def run(self, script: str) -> None:
        """Run an nft script as one transaction."""

    def check(self, script: str) -> None:
        """Check an nft script without committing it (`nft -c`)."""

    def apply(
        self, tx: Transaction, sets: Mapping[str, SetDef], *, generation: int | None = None
    ) -> bool:
        """Run one transaction; its elements as a netlink batch where the backend can.
        True when that batch was refused unless `generation` was the kernel's id."""

    def batches(self, tx: Transaction, sets: Mapping[str, SetDef]) -> bool:
        """Whether `apply` would send `tx` as a netlink batch (that checks a generation)."""

    def list_table(self) -> dict[str, Any] | None:
        """`nft -j list table` of our table; None when there is none."""

    def list_set(self, name: str, *, is_map: bool) -> dict[str, Any] | None:
        """`nft -j list set|map` of one set of our table; None when it does not exist."""

    def objects(self) -> TableObjects | None:
        """Our table's chains (rule counts) and sets, without elements; None: no table."""

    def set_elements(self, name: str) -> list[bytes] | None:
        """One set's elements as the kernel encodes them; None when there is no such set."""

    def dump_sets(self, names: Sequence[str]) -> Dumps:
        """Start listing these sets' elements in the background (see set_elements)."""

    def generation(self) -> int:
        """The kernel's nftables generation id: it moves with every commit, anyone's."""

    def monitor(self, ours: Ours | None = None) -> CommitMonitor:
        """Follow the commits that touch our table (see netlink.CommitMonitor)."""

    def forget_caches(self) -> None:
        """Let go of memory kept for speed."""

    def close(self) -> None: ...


def open_backend(netns: str | None = None, *, prefer: str = "auto") -> Backend:
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
