"""Reading ginkgo's JUnit report and putting two proxies side by side."""

from __future__ import annotations

from nftproxy.lab.cluster import e2e
from nftproxy.lab.cluster.e2e import SpecResult

# The shapes ginkgo v2 writes (trimmed from a real run against this project's cluster).
JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="2" errors="0" failures="1" time="183">
  <testsuite name="Kubernetes e2e suite" package="/x" tests="5" skipped="2" failures="1">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.2"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance] [sig-network, Conformance]" classname="Kubernetes e2e suite" status="passed" time="10.4"></testcase>
    <testcase name="[It] [sig-network] Services should be rejected when no endpoints exist [sig-network]" classname="Kubernetes e2e suite" status="failed" time="121">
      <failure message="[FAILED] service is not reachable within 2m0s timeout&#xA;on endpoint x:80" type="failed">long text</failure>
    </testcase>
    <testcase name="[It] [sig-network] DNS should work with the pod containing more than 6 DNS search paths [sig-network]" classname="Kubernetes e2e suite" status="skipped" time="0.1">
      <skipped message="skipped - Requires at least 3 nodes (not 2)"></skipped>
    </testcase>
    <testcase name="[It] [sig-apps] StatefulSet should scale [Slow] [sig-apps, Slow]" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0"></testcase>
  </testsuite>
</testsuites>
"""


def test_specs_outside_the_focus_and_suite_nodes_are_left_out() -> None:
    results = e2e.parse_junit(JUNIT)
    assert [(r.state, r.name) for r in results] == [
        (
            "skipped",
            "[sig-network] DNS should work with the pod containing more than 6 DNS search paths",
        ),
        ("failed", "[sig-network] Services should be rejected when no endpoints exist"),
        ("passed", "[sig-network] Services should serve a basic endpoint from pods [Conformance]"),
    ]
    skipped, failed, _ = results
    assert skipped.reason == "Requires at least 3 nodes (not 2)"
    assert failed.reason == "[FAILED] service is not reachable within 2m0s timeout on endpoint x:80"
    assert e2e.counts(results) == {"passed": 1, "failed": 1, "skipped": 1}


def test_side_by_side_table_names_every_reason() -> None:
    a = [SpecResult("s1", "passed", 3.0), SpecResult("s2", "failed", 9.0, "timeout | x")]
    b = [
        SpecResult("s1", "passed", 4.0),
        SpecResult("s2", "passed", 5.0),
        SpecResult("s3", "skipped", 0, "needs 3 nodes"),
    ]
    table = e2e.markdown({"nftproxy": a, "kube-proxy": b})
    lines = table.splitlines()
    assert lines[0] == "| spec | nftproxy | kube-proxy |"
    assert "| s2 | **failed** | passed (5 s) |" in lines
    assert "| s3 | not run | **skipped** |" in lines
    assert "- **nftproxy, failed:** s2: timeout \\| x" in lines
    assert "- **kube-proxy, skipped:** s3: needs 3 nodes" in lines
    assert "nftproxy: 1 passed, 1 failed, 0 skipped" in table
