"""Judge the cluster with Kubernetes' own e2e network specs (ginkgo driving e2e.test).

`nftproxy cluster e2e` runs a suite against a cluster that is up and writes, into its
output directory, ginkgo's JUnit report and `results.json` (one row per spec that the
focus selected: passed, failed or skipped, with the reason).
`python -m nftproxy.lab.cluster.e2e A/results.json B/results.json` puts several runs side
by side as markdown (hack/cluster/e2e.sh does, for docs/conformance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nftproxy.lab.cluster.cluster import Cluster, ClusterError

__all__ = [
    "ALWAYS_SKIP",
    "SUITES",
    "SpecResult",
    "Suite",
    "add_arguments",
    "counts",
    "load_results",
    "main",
    "markdown",
    "parse_junit",
    "report_main",
    "run",
    "spec_name",
]

# Never in any suite: they need a cloud provider, break the cluster on purpose, or test
# something this cluster does not have (IPv6, a second network family, feature gates).
ALWAYS_SKIP = r"Disruptive|Flaky|LoadBalancer|ESIPP|\[Feature:|GCE|AWS|Azure|IPv6|DualStack"


@dataclass(frozen=True)
class Suite:
    focus: str
    skip: str
    procs: int
    about: str


SUITES: Mapping[str, Suite] = {
    "conformance": Suite(
        focus=r"\[sig-network\] Services .*\[Conformance\]",
        skip=r"",
        procs=2,
        about="all [sig-network] Services ... [Conformance] specs",
    ),
    "network": Suite(
        focus=(
            r"\[sig-network\] (Services|Conntrack|DNS|EndpointSlice|EndpointSliceMirroring|"
            r"EndpointsController|Endpoints|Traffic Distribution|Topology Hints|"
            r"Service endpoints latency|KubeProxy|Service CIDRs|ServiceCIDR and IPAddress|NoSNAT|"
            r"Networking should|Networking Granular Checks: Services|Proxy version)"
        ),
        skip=ALWAYS_SKIP,
        procs=3,
        about="the Service, DNS, EndpointSlice, Conntrack, session-affinity and "
        "traffic-policy specs of sig-network that need no cloud provider and no disruption",
    ),
}


@dataclass(frozen=True)
class SpecResult:
    name: str
    state: str  # passed | failed | skipped
    seconds: float
    reason: str = ""


def parse_junit(xml_text: str) -> list[SpecResult]:
    """The specs ginkgo ran or skipped inside the focus (filtered-out specs are left out)."""
    root = ET.fromstring(xml_text)
    results = []
    for case in root.iter("testcase"):
        name = spec_name(case.get("name", ""))
        if name.startswith("[SynchronizedBeforeSuite]") or name.startswith(
            "[SynchronizedAfterSuite]"
        ):
            continue
        if name.startswith("[ReportAfterSuite]") or name.startswith("[ReportBeforeSuite]"):
            continue
        status = case.get("status", "")
        seconds = float(case.get("time") or 0)
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failure is not None or error is not None or status in ("failed", "panicked", "timedout"):
            node = failure if failure is not None else error
            message = (node.get("message") if node is not None else "") or status
            results.append(SpecResult(name, "failed", seconds, _one_line(message)))
        elif skipped is not None or status in ("skipped", "pending"):
            message = (skipped.get("message") if skipped is not None else "") or status
            if message.startswith("skipped - "):
                message = message.removeprefix("skipped - ")
            if message in ("skipped", ""):
                continue  # filtered out by focus/skip: not part of the suite
            results.append(SpecResult(name, "skipped", seconds, _one_line(message)))
        else:
            results.append(SpecResult(name, "passed", seconds))
    return sorted(results, key=lambda r: r.name)


def spec_name(junit_name: str) -> str:
    """The spec's text as ginkgo's focus sees it: no `[It]` node type, no label list."""
    name = junit_name.removeprefix("[It] ")
    return re.sub(r" \[sig-[^\]]*\]$", "", name)


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def counts(results: Sequence[SpecResult]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "skipped": 0}
    for r in results:
        out[r.state] += 1
    return out


def markdown(runs: Mapping[str, Sequence[SpecResult]], *, title: str = "") -> str:
    """One table: a row per spec, a column per run (proxy), reasons for anything not passed."""
    names = sorted({r.name for results in runs.values() for r in results})
    by_run = {run: {r.name: r for r in results} for run, results in runs.items()}
    lines = []
    if title:
        lines += [title, ""]
    lines.append("| " + " | ".join(["spec", *runs]) + " |")
    lines.append("|" + "---|" * (len(runs) + 1))
    notes: list[str] = []
    for name in names:
        cells = []
        for run in runs:
            r = by_run[run].get(name)
            if r is None:
                cells.append("not run")
            elif r.state == "passed":
                cells.append(f"passed ({r.seconds:.0f} s)")
            else:
                notes.append(f"- **{run}, {r.state}:** {_escape(name)}: {_escape(r.reason)}")
                cells.append(f"**{r.state}**")
        lines.append(f"| {_escape(name)} | " + " | ".join(cells) + " |")
    totals = ", ".join(
        f"{run}: " + ", ".join(f"{v} {k}" for k, v in counts(results).items())
        for run, results in runs.items()
    )
    lines += ["", f"Totals: {totals}."]
    if notes:
        lines += ["", "Why each spec that did not pass did not:", "", *notes]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def run(
    cluster: Cluster,
    suite: Suite,
    out: Path,
    *,
    focus: str | None = None,
    skip: str | None = None,
    procs: int | None = None,
    timeout: str = "90m",
) -> list[SpecResult]:
    """Run ginkgo + e2e.test in the control plane's namespace; results also land in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    junit.unlink(missing_ok=True)
    bin_dir = cluster.bin
    for name in ("ginkgo", "e2e.test", "kubectl"):
        if not (bin_dir / name).exists():
            raise ClusterError(f"{bin_dir / name} is missing: run hack/cluster/build.sh")
    ginkgo = [
        str(bin_dir / "ginkgo"),
        f"--procs={procs or suite.procs}",
        f"--timeout={timeout}",
        f"--focus={focus if focus is not None else suite.focus}",
        "--no-color",
        f"--junit-report={junit}",
    ]
    skip_re = skip if skip is not None else suite.skip
    if skip_re:
        ginkgo.append(f"--skip={skip_re}")
    nodes = cluster.spec.nodes
    argv = [
        *ginkgo,
        str(bin_dir / "e2e.test"),
        "--",
        "--provider=skeleton",
        f"--kubeconfig={cluster.kubeconfig_path()}",
        f"--num-nodes={nodes}",
        f"--kubectl-path={bin_dir / 'kubectl'}",
        f"--report-dir={out}",
        "--dns-domain=cluster.local",
        "--disable-log-dump",
    ]
    start = time.monotonic()
    with open(out / "ginkgo.log", "wb") as log:
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{cluster.spec.cp_netns}", "--", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=out,
            check=False,
            env=cluster.env(),
        )
    elapsed = time.monotonic() - start
    if not junit.exists():
        raise ClusterError(
            f"ginkgo wrote no report (exit {proc.returncode}); see {out / 'ginkgo.log'}"
        )
    results = parse_junit(junit.read_text())
    (out / "results.json").write_text(
        json.dumps(
            {
                "proxy": cluster.spec.proxy,
                "nodes": nodes,
                "focus": focus if focus is not None else suite.focus,
                "skip": skip_re,
                "seconds": round(elapsed),
                "specs": [asdict(r) for r in results],
            },
            indent=1,
        )
        + "\n"
    )
    return results


def load_results(path: Path) -> tuple[str, list[SpecResult], dict[str, object]]:
    data = json.loads(path.read_text())
    specs = [SpecResult(**s) for s in data["specs"]]
    return str(data.get("proxy", path.parent.name)), specs, data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="conformance",
        help="; ".join(f"{k}: {v.about}" for k, v in SUITES.items()),
    )
    p.add_argument("--focus", help="ginkgo focus regexp instead of the suite's")
    p.add_argument("--skip", help="ginkgo skip regexp instead of the suite's")
    p.add_argument("--procs", type=int, help="parallel ginkgo processes (default: the suite's)")
    p.add_argument("--out", help="output directory (default: ./nftproxy-e2e/SUITE-PROXY)")


def main(cluster: Cluster, args: argparse.Namespace) -> int:
    """`nftproxy cluster e2e`, on a cluster the command found up."""
    suite = SUITES[args.suite]
    out = (
        Path(args.out)
        if args.out
        else Path.cwd() / "nftproxy-e2e" / f"{args.suite}-{cluster.spec.proxy}"
    )
    results = run(cluster, suite, out, focus=args.focus, skip=args.skip, procs=args.procs)
    c = counts(results)
    for r in results:
        if r.state != "passed":
            print(f"{r.state.upper():8} {r.name}\n         {r.reason}")
    print(
        f"{cluster.spec.proxy}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
        f"(report: {out / 'junit.xml'}, {out / 'results.json'})"
    )
    if not results:
        print("no spec matched the focus", file=sys.stderr)
        return 1
    return 1 if c["failed"] else 0


def report_main(argv: Sequence[str] | None = None) -> int:
    """python -m nftproxy.lab.cluster.e2e RESULTS.json... : the side-by-side markdown table."""
    paths = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m nftproxy.lab.cluster.e2e RESULTS.json...", file=sys.stderr)
        return 2
    runs = {}
    for path in paths:
        proxy, specs, _ = load_results(path)
        runs[proxy] = specs
    sys.stdout.write(markdown(runs))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(report_main())
