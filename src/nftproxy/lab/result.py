"""What a burst of test connections produced: replies per "NAME SOURCE_IP" and failures.

`nftproxy.lab.client` prints it as JSON; `Lab.connect` reads it back with `Result.from_json`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Result",
]


@dataclass(slots=True)
class Result:
    """Replies are keyed by the server's line, "NAME SOURCE_IP" (the source the server
    saw). `refused`: ECONNREFUSED, a TCP reset or ICMP port unreachable (UDP); `timeouts`:
    no answer in time; `other`: anything else (no route, host unreachable, empty reply),
    detailed in `errors` by errno name."""

    replies: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    timeouts: int = 0
    other: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        """How many attempts got a reply."""
        return sum(self.replies.values())

    @property
    def failures(self) -> int:
        return self.refused + self.timeouts + self.other

    @property
    def attempts(self) -> int:
        return self.ok + self.failures

    def endpoints(self) -> Counter[str]:
        """Replies per server name (whatever source it saw)."""
        out: Counter[str] = Counter()
        for line, n in self.replies.items():
            out[line.split(" ", 1)[0]] += n
        return out

    def sources(self) -> set[str]:
        """The client addresses the servers saw (a masqueraded client shows a node IP)."""
        return {line.split(" ", 1)[1] for line in self.replies if " " in line}

    def to_json(self) -> dict[str, Any]:
        return {
            "replies": dict(sorted(self.replies.items())),
            "failures": {"refused": self.refused, "timeout": self.timeouts, "other": self.other},
            "errors": dict(sorted(self.errors.items())),
            "elapsed": round(self.elapsed, 6),
        }

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Result:
        obj: dict[str, Any] = json.loads(data) if isinstance(data, str) else data
        failures = obj.get("failures", {})
        return cls(
            replies=Counter({str(k): int(v) for k, v in obj.get("replies", {}).items()}),
            refused=int(failures.get("refused", 0)),
            timeouts=int(failures.get("timeout", 0)),
            other=int(failures.get("other", 0)),
            errors=Counter({str(k): int(v) for k, v in obj.get("errors", {}).items()}),
            elapsed=float(obj.get("elapsed", 0.0)),
        )

    def summary(self) -> str:
        parts = [f"{n} x {line}" for line, n in sorted(self.replies.items())]
        fails = f"refused {self.refused}, timeout {self.timeouts}, other {self.other}"
        if self.errors:
            fails += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) + ")"
        return "; ".join([*parts, fails]) + f"; {self.elapsed:.3f}s"
