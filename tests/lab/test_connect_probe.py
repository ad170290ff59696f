"""The benchmarks' connect probe (nftproxy.lab.connect_probe), checked against a real
kernel: a probe that misses or misreads would make every number built on it wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel


def test_connect_probe_measures_connects_and_counts_failures(netns):
    server = subprocess.Popen(
        [
            *("ip", "netns", "exec", netns, sys.executable, "-m", "nftproxy.lab.echo"),
            *("--name", "srv", "--tcp", "8080", "--max-seconds", "60"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None and b"ready" in server.stdout.readline()
        probe = [sys.executable, "-m", "nftproxy.lab.connect_probe"]
        out = subprocess.run(
            [
                *("ip", "netns", "exec", netns, *probe, "latency"),
                *("127.0.0.1:8080", "127.0.0.1:9", "--count", "50", "--connect-timeout", "0.5"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        got = json.loads(out)
        assert got["127.0.0.1:8080"]["failures"] == 0
        assert 0 < got["127.0.0.1:8080"]["p50_ms"] <= got["127.0.0.1:8080"]["p99_ms"]
        assert got["127.0.0.1:9"]["failures"] == 50  # nothing listens there
        waited = subprocess.run(
            ["ip", "netns", "exec", netns, *probe, "wait", "127.0.0.1:8080", "--timeout", "5"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert waited[0] == "ready"
        stamp, said = waited[1].split(" ", 1)
        assert float(stamp) <= time.monotonic() and said == "srv 127.0.0.1"
    finally:
        server.terminate()
        server.communicate(timeout=10)
