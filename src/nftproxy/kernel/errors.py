"""How nftables says no: `NftError` with a kind (not-found, exists, permission, rejected),
classified once from nft's text or the kernel's errno, the original text kept."""

from __future__ import annotations

import errno as errno_codes
import json
from collections.abc import Callable
from typing import Any

from nftproxy.ruleset.schema import ElementKey

__all__ = [
    "NEEDS_NET_ADMIN",
    "NEEDS_SYS_ADMIN",
    "NetlinkError",
    "NftError",
    "Unsupported",
    "classify",
    "kind_of",
    "listed_or_none",
    "raise_for",
]


class NftError(Exception):
    """nft refused a command. `kind` is not-found, exists, permission or rejected."""

    def __init__(self, message: str, *, kind: str = "rejected") -> None:
        super().__init__(message)
        self.kind = kind


def classify(text: str) -> str:
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


def raise_for(text: str, script: str) -> None:
    if classify(text) == "permission":
        # One line: the script is no help to whoever lacks the privilege.
        raise NftError(f"{NEEDS_NET_ADMIN}: Operation not permitted", kind="permission")
    lines = script.splitlines()
    excerpt = "\n".join(line[:300] for line in lines[:5])
    more = f"\n... ({len(lines)} lines)" if len(lines) > 5 else ""
    raise NftError(f"{text.strip()}\nwhile running:\n{excerpt}{more}", kind=classify(text))


class Unsupported(NftError):
    """This backend cannot do that (the nft binary has no netlink listings, say)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unsupported")


def kind_of(err: int) -> str:
    if err == errno_codes.ENOENT:
        return "not-found"
    if err in (errno_codes.EEXIST, errno_codes.EBUSY):
        return "exists"
    if err in (errno_codes.EPERM, errno_codes.EACCES):
        return "permission"
    return "rejected"


class NetlinkError(NftError):
    """The kernel (or the encoder) refused a batch: nothing of it was applied, unless
    `outcome_unknown` (no complete answer came back: read the table again).

    `errno` is the first error's code, `set_name`/`element`/`op` locate it when known,
    `detail` is the kernel's extended-ack text, `errors` counts errors in the batch.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int,
        set_name: str | None = None,
        element: ElementKey | None = None,
        op: str | None = None,
        detail: str = "",
        errors: int = 1,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message, kind=kind_of(errno))
        self.outcome_unknown = outcome_unknown
        self.errno = errno
        self.set_name = set_name
        self.element = element
        self.op = op
        self.detail = detail
        self.errors = errors


def listed_or_none(read: Callable[[], str]) -> dict[str, Any] | None:
    """The JSON `read` returns (an `nft -j list` command), or None when nft says that what
    it lists does not exist."""
    try:
        out = read()
    except NftError as exc:
        if exc.kind == "not-found":
            return None
        raise
    doc: dict[str, Any] = json.loads(out)
    return doc
