"""`nftproxy run` as a child process, for tests of the daemon as users run it.

Its log goes to a file the test can wait on; `kill()` is kill -9 (a crash), `stop()` is
SIGTERM. Every daemon a test starts is ended by the fixture that made it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

FEATURES = Path(__file__).parents[1] / "data" / "features.yaml"
# The node options tests/data/features.yaml is written for.
FEATURES_NODE = [
    "--node-name",
    "node-a",
    "--node-ip",
    "192.168.0.1",
    "--cluster-cidr",
    "10.244.0.0/16",
    "--cluster-cidr",
    "fd00:244::/64",
]


class Daemon:
    """One `nftproxy run` process; its combined output is in `log_path`."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nftproxy", "run", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until the log matches `pattern` `count` times; fail with the log if not."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}):\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the daemon's log:\n{text}")
            time.sleep(0.05)

    def wait_until(self, check: Callable[[], bool], what: str, *, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited while waiting for {what}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen:\n{self.log}")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no chance to clean up, as in a crash or an OOM kill."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self._reap(timeout)
        return self.proc.returncode

    def _reap(self, timeout: float = 20.0) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def run_args(
    netns: str, manifests: Sequence[str | Path], *extra: str, node: Sequence[str] = FEATURES_NODE
) -> list[str]:
    """Arguments for a quick daemon on `manifests` in `netns`, without HTTP servers."""
    args = [f"--manifests={m}" for m in manifests]
    return [
        *args,
        "--netns",
        netns,
        *node,
        "--min-sync-period",
        "0.1",
        "--poll-interval",
        "0.1",
        "--healthz-bind-address=",
        "--metrics-bind-address=",
        *extra,
    ]
