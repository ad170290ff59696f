"""`nftproxy demo`, the README's main job, run as a user would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from kernel import require_kernel


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_demo_balances_traffic_rebalances_on_scaling_and_cleans_up():
    require_kernel()
    out = subprocess.run(
        [sys.executable, "-m", "nftproxy", "demo", "--duration", "9", "--live", "no"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "nftproxy synced both nodes; traffic flows" in text
    assert "scaled web up" in text and "scaled web down" in text
    assert re.search(r"\d+ connections, 0 failed", text)
    # Before scaling, all four first pods answered through the LoadBalancer IP. The first
    # screen alone holds 100 web connections (60 via the LB IP, 40 via the NodePort), so a
    # correct proxy leaves a pod out with probability at most 4 * (3/4)^100 = 1.3e-12.
    first_screen = text.split("\n\n\n")[0]
    for pod in ("pod-1", "pod-2", "pod-3", "pod-4"):
        assert re.search(rf"{pod}\s+\d+/s", first_screen)
    # Everything the demo created (named with its lab's prefix) is gone.
    prefix = re.search(r"lab (nftp-[0-9a-f]+)", text).group(1)
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_demo_without_root_says_what_is_missing():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "nftproxy",
            "demo",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert out.returncode == 1
    assert "needs root" in out.stderr
