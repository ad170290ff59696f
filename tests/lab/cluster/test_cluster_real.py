"""A real cluster (kubelets, containerd, CNI, CoreDNS, pods) with nftproxy as its proxy.

Needs root and the binaries of hack/cluster/build.sh; without them the tests skip on a
user's machine, naming what is missing, and fail under CI=true. The Services conformance
specs of Kubernetes' own e2e suite run against the same cluster at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.kernel.netns import run_in_netns
from nftproxy.lab.cluster import e2e
from nftproxy.lab.cluster.cluster import Cluster, bin_dir, hierarchies
from nftproxy.lab.cluster.config import KUBELET_SYSCTLS, Spec
from tests.support.kernel import require_kernel

NEEDED = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "crictl",
    "bridge",
    "host-local",
    "loopback",
    "pause",
    "agnhost",
    "coredns",
    "regression-issue-74839",
    "ginkgo",
    "e2e.test",
]


def require_cluster_parts() -> None:
    require_kernel()
    missing = [name for name in NEEDED if not (bin_dir() / name).exists()]
    tools = [t for t in ("openssl", "nsenter", "unshare", "curl", "dig") if not shutil.which(t)]
    if not missing and not tools:
        return
    what = (
        f"{', '.join(missing)} in {bin_dir()} (run hack/cluster/build.sh)" if missing else ""
    ) + (f" the commands {', '.join(tools)}" if tools else "")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the cluster tests, but this machine lacks {what}")
    pytest.skip(f"needs {what}")


def _vm_state(name: str) -> dict[str, object]:
    """What the cluster must leave as it found it: the sysctls the kubelet wants, and the
    directories its parts write to by default (they get private ones)."""
    state: dict[str, object] = {k: Path("/proc/sys", k).read_text() for k in KUBELET_SYSCTLS}
    for d in ("/var/lib", "/var/log", "/etc", "/opt", Path.home()):
        # Other clusters (default directories) come and go under /var/lib/nftproxy-cluster.
        state[str(d)] = sorted(set(os.listdir(d)) - {"nftproxy-cluster"})
    state["cgroups"] = sorted(str(p) for h in hierarchies() for p in h.glob(f"nftproxy-{name}-*"))
    return state


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_cluster_parts()
    name = "t" + uuid.uuid4().hex[:7]
    c = Cluster(Spec(name=name, dir=tmp_path_factory.mktemp("cluster") / name))
    before = _vm_state(name)
    try:
        c.up()
        yield c
    finally:
        left = c.down()
        assert not left, f"cluster down left {left}"
    assert _vm_state(name) == before, "the cluster changed the machine"


def _get(netns: str, host: str, port: int, path: str = "/hostname") -> str:
    def fetch() -> str:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    return run_in_netns(f"/run/netns/{netns}", fetch)


def _wait_ready(c: Cluster, namespace: str, selector: str, count: int) -> list[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pods = json.loads(c.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json"))
        ready = [
            p["metadata"]["name"]
            for p in pods["items"]
            if any(
                cond["type"] == "Ready" and cond["status"] == "True"
                for cond in p["status"].get("conditions", [])
            )
        ]
        if len(ready) == count:
            return sorted(ready)
        time.sleep(1)
    raise AssertionError(f"{selector}: {count} pods not ready in time")


def test_a_nodeport_reaches_every_pod_of_a_deployment_from_both_nodes(cluster: Cluster) -> None:
    ns = "demo-" + uuid.uuid4().hex[:6]
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl(
        "-n",
        ns,
        "create",
        "deployment",
        "web",
        "--replicas=4",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.63.0",
        "--port=9376",
        "--",
        "/agnhost",
        "serve-hostname",
    )
    cluster.kubectl(
        "-n",
        ns,
        "expose",
        "deployment",
        "web",
        "--type=NodePort",
        "--port=80",
        "--target-port=9376",
    )
    pods = _wait_ready(cluster, ns, "app=web", 4)
    spread = json.loads(cluster.kubectl("-n", ns, "get", "pods", "-o", "json"))
    assert len({p["spec"]["nodeName"] for p in spread["items"]}) == 2, "pods all on one node"
    svc = json.loads(cluster.kubectl("-n", ns, "get", "service", "web", "-o", "json"))
    node_port = svc["spec"]["ports"][0]["nodePort"]
    for node in cluster.spec.all_nodes():
        # The proxy programs the endpoints as their EndpointSlice updates arrive, within its
        # sync period: keep asking until every pod answered. Once all are programmed, a pod
        # is missed in 60 answers with probability 4 * (3/4)**60 < 2e-7; the loop asks for
        # up to 60 s, far more often than that.
        seen: set[str] = set()
        answers = 0
        deadline = time.monotonic() + 60
        while seen != set(pods) and time.monotonic() < deadline:
            try:
                seen.add(_get(cluster.spec.cp_netns, node.ip, node_port))
                answers += 1
            except OSError:
                time.sleep(0.2)
        assert seen == set(pods), (
            f"through {node.name}: {answers} answers from {seen}, expected {pods}"
        )


def test_a_pod_resolves_a_service_name_through_coredns(cluster: Cluster) -> None:
    ns = "dns-" + uuid.uuid4().hex[:6]
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl(
        "-n",
        ns,
        "run",
        "client",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.63.0",
        "--restart=Never",
        "--command",
        "--",
        "/agnhost",
        "pause",
    )
    cluster.kubectl("-n", ns, "create", "service", "clusterip", "named", "--tcp=80:80")
    _wait_ready(cluster, ns, "run=client", 1)
    ip = json.loads(cluster.kubectl("-n", ns, "get", "service", "named", "-o", "json"))["spec"][
        "clusterIP"
    ]
    answer = cluster.kubectl("-n", ns, "exec", "client", "--", "dig", "+short", "+search", "named")
    assert answer.split() == [ip]


def test_kubernetes_own_services_conformance_specs_pass(cluster: Cluster, tmp_path: Path) -> None:
    results = e2e.run(cluster, e2e.SUITES["conformance"], tmp_path)
    failed = [f"{r.name}: {r.reason}" for r in results if r.state != "passed"]
    assert not failed, "\n".join(failed)
    # v1.36.3 has 15 of them; a focus that matched nothing would pass vacuously.
    assert len(results) >= 15


def test_down_after_a_crashed_up_leaves_nothing_behind(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_cluster_parts()
    name = "c" + uuid.uuid4().hex[:7]
    # A short path: containerd's sockets live in it.
    spec = Spec(name=name, dir=tmp_path_factory.mktemp("c") / name, nodes=1)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nftproxy",
            "cluster",
            "up",
            "--name",
            name,
            "--dir",
            str(spec.dir),
            "--nodes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Crash it once a node's kubelet runs: namespaces, mounts, cgroups and processes exist.
        deadline = time.monotonic() + 120
        kubelet_pid = spec.dir / "pids" / "node1-kubelet"
        while not kubelet_pid.exists():
            if up.poll() is not None:
                out = up.stdout.read().decode() if up.stdout else ""
                raise AssertionError(f"cluster up ended before the kubelet started:\n{out}")
            assert time.monotonic() < deadline, "the kubelet did not start"
            time.sleep(0.2)
        up.send_signal(signal.SIGKILL)
        up.wait()
        c = Cluster(spec)
        assert c.members(), "nothing was running to crash"
        assert c.down() == []
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stdout:
            up.stdout.close()
        Cluster(spec).down()
    assert not c.members()
    assert not any(Path("/run/netns", ns).exists() for ns in spec.netns_names())
    node = spec.node(1)
    assert not any((h / node.cgroup_root.lstrip("/")).exists() for h in hierarchies())
    assert not spec.dir.exists()
    with open("/proc/self/mountinfo") as f:
        assert str(spec.dir) not in f.read()
