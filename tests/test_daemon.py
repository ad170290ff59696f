"""`nftproxy run` as an operator runs it: restarts, crashes, bad input, foreign changes.

Each test starts real daemons (child processes) on manifest directories, in network
namespaces it creates, and judges them by what the kernel holds and what they log.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from daemon import FEATURES, FEATURES_NODE, run_args
from kernel import nft_in

from nftproxy.nft import open_backend

pytestmark = pytest.mark.kernel


def generations(netns: str) -> set[int]:
    listing = nft_in(netns, "list", "chains", "inet")
    return {int(g) for g in re.findall(r"chain g(\d+)-services4", listing)}


def plan(netns: str, *paths: str | Path) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nftproxy",
            "plan",
            *map(str, paths),
            "--netns",
            netns,
            *FEATURES_NODE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_daemon_killed_and_restarted_over_every_feature_finds_its_table_in_sync(
    netns, tmp_path, start_daemon
):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "features.yaml").write_text(FEATURES.read_text())
    first = start_daemon(*run_args(netns, [manifests]))
    first.wait_for(r"full sync: generation")
    # Two Services on one external IP and port: the daemon says so, as compile does.
    first.wait_for(
        re.escape("192.0.2.90:80/tcp is claimed by several Services (shop/claim-a, shop/claim-b)")
    )
    first.kill()
    kernel = open_backend(netns)
    for restart in range(2):
        committed = kernel.generation()
        again = start_daemon(*run_args(netns, [manifests]))
        log = again.wait_for(r"full sync: ")
        again.kill()
        assert "full sync: noop" in log and "sync failed" not in log, log
        # Not one commit: the table was compared, not rewritten.
        assert kernel.generation() == committed, f"restart {restart + 1}:\n{log}"
        assert generations(netns) == {1}
        assert plan(netns, manifests).startswith("# noop")
