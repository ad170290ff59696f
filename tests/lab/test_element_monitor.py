"""The benchmarks' element monitor (nftproxy.lab.element_monitor), checked against a real
kernel: a probe that misses or misreads would make every number built on it wrong."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.kernel import nft_in

pytestmark = pytest.mark.kernel


def _monitor(netns: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "nftproxy.lab.element_monitor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _lines(proc: subprocess.Popen[str]) -> list[tuple[float, str]]:
    time.sleep(0.3)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return [(float(t), ip) for t, ip in (line.split() for line in out.splitlines())]


def test_the_element_monitor_stamps_new_map_elements_with_the_callers_clock(netns):
    before = time.monotonic()
    mon = _monitor(netns, "--prefix", "10.200.")
    nft_in(
        netns,
        "-f",
        "-",
        stdin="add table inet t\n"
        "add map inet t m { typeof ip daddr . tcp dport : ip daddr . tcp dport; }\n"
        "add element inet t m { 10.96.0.1 . 80 : 10.200.0.5 . 8080 }\n"
        "add element inet t m { 10.96.0.2 . 80 : 10.244.0.9 . 8080 }\n",
    )
    got = _lines(mon)
    assert [ip for _, ip in got] == ["10.200.0.5"]  # the prefix filters the other one
    assert before < got[0][0] < time.monotonic()


def test_anywhere_finds_an_address_inside_a_rule(netns):
    mon = _monitor(netns, "--prefix", "10.201.", "--anywhere")
    nft_in(
        netns,
        "-f",
        "-",
        stdin="add table ip t\n"
        "add chain ip t c { type nat hook prerouting priority 0; }\n"
        "add rule ip t c ip daddr 10.96.0.1 tcp dport 80 dnat to 10.201.3.4:8080\n",
    )
    assert "10.201.3.4" in [ip for _, ip in _lines(mon)]
