"""`nftproxy run` against a real kube-apiserver: API changes reach a namespace's rules, and
the daemon answers /healthz and /metrics as kube-proxy does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from nftproxy.lab.apiserver import free_ports
from tests.support.control_plane import start_control_plane
from tests.support.kernel import nft_in

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
}


def slice_with(*ips: str) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": "node-a"} for ip in ips],
    }


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def table(netns: str, set_name: str = "") -> str:
    """`nft list` of our table (or of one of its sets), "" while there is none."""
    what = ("set", "inet", "nftproxy", set_name) if set_name else ("table", "inet", "nftproxy")
    try:
        return nft_in(netns, "list", *what)
    except AssertionError:
        return ""


def daemon_argv(kubeconfig: object, netns: str, *more: str, node: str = "node-a") -> list[str]:
    """`nftproxy run` as `node` on the API into `netns`, without HTTP servers unless `more`
    says otherwise (a later flag wins)."""
    return [
        *(sys.executable, "-m", "nftproxy", "run", "--kubeconfig", str(kubeconfig)),
        *("--netns", netns, "--hostname-override", node, "--min-sync-period", "0.1"),
        *("--healthz-bind-address=", "--metrics-bind-address=", *more),
    ]


def user_binding(role: str) -> dict:
    """Binds the ClusterRole `role` to the test control plane's user "nftproxy"."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "nftproxy-test-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nftproxy"}],
    }


def test_the_daemon_follows_the_api_and_serves_health_and_metrics(netns, tmp_path):
    with start_control_plane(tmp_path / "cp") as cp:
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.admin_token)
        health_port, metrics_port = free_ports(2)
        proc = subprocess.Popen(
            daemon_argv(
                kubeconfig,
                netns,
                *("--node-ip", "192.168.0.1"),
                f"--healthz-bind-address=127.0.0.1:{health_port}",
                f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            status, svc = cp.request("POST", "/api/v1/namespaces/default/services", SERVICE)
            assert status == 201, svc
            vip = svc["spec"]["clusterIP"]
            path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
            assert cp.request("POST", path, slice_with("10.244.1.5"))[0] == 201
            eventually(
                lambda: f"{vip} . 80 . 0 : 10.244.1.5 . 8080" in table(netns), "the endpoint"
            )

            status, current = cp.request("GET", f"{path}/web-1")
            current["endpoints"] = slice_with("10.244.1.5", "10.244.1.6")["endpoints"]
            assert cp.request("PUT", f"{path}/web-1", current)[0] == 200
            eventually(lambda: "10.244.1.6 . 8080" in table(netns), "the second endpoint")

            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as r:
                assert r.status == 200
                assert "lastUpdated" in json.load(r)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert "kubeproxy_sync_proxy_rules_duration_seconds_count" in text
            assert "nftproxy_elements" in text

            assert cp.request("DELETE", "/api/v1/namespaces/default/services/web")[0] == 200
            eventually(lambda: vip not in table(netns), "the Service to go")
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "serving network namespace" in out


DEPLOY = __import__("pathlib").Path(__file__).parents[2] / "deploy"


def test_the_deployed_cluster_role_is_enough_and_less_is_a_clear_error(netns, tmp_path):
    import yaml

    role = yaml.safe_load((DEPLOY / "clusterrole.yaml").read_text())
    binding = user_binding("nftproxy")
    with start_control_plane(tmp_path / "cp") as cp:
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.user_token)
        argv = daemon_argv(kubeconfig, netns)
        # Without the role: the daemon says which resource it may not read, and keeps trying.
        denied = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3)
        finally:
            os.kill(denied.pid, signal.SIGTERM)
            out, _ = denied.communicate(timeout=30)
        assert 'cannot list resource "services"' in out, out[-2000:]
        assert 'cannot list resource "endpointslices"' in out

        assert cp.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)[0] == 201
        path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        assert cp.request("POST", path, binding)[0] == 201
        status, svc = cp.request("POST", "/api/v1/namespaces/default/services", SERVICE)
        assert status == 201
        slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        assert cp.request("POST", slices, slice_with("10.244.1.5"))[0] == 201
        allowed = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            vip = svc["spec"]["clusterIP"]
            eventually(
                lambda: f"{vip} . 80 . 0 : 10.244.1.5 . 8080" in table(netns), "the endpoint"
            )
        finally:
            os.kill(allowed.pid, signal.SIGTERM)
            out, _ = allowed.communicate(timeout=30)
        assert "Forbidden" not in out and "cannot" not in out, out[-2000:]


def test_api_changes_reach_real_traffic_in_the_lab(tmp_path):
    """The daemon (in the host namespace, programming a lab node's namespace) follows the
    API; an outside client's connections follow the Service as it changes."""
    from nftproxy.lab import Lab, default_topology
    from tests.support.kernel import require_kernel

    require_kernel()
    with (
        Lab.create(default_topology(nodes=1, pods_per_node=3)) as lab,
        start_control_plane(tmp_path / "cp") as cp,
    ):
        lab.start_echo_all(tcp=(8080,), udp=())
        node = lab.topology.nodes[0]
        pods = list(lab.topology.pods)
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.admin_token)
        proc = subprocess.Popen(
            daemon_argv(
                kubeconfig,
                str(lab.ns_path(node)),
                *("--node-ip", node.ip4, "--cluster-cidr", "10.244.0.0/16"),
                node=node.name,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            service = json.loads(json.dumps(SERVICE))
            service["spec"]["type"] = "NodePort"
            service["spec"]["ports"][0]["nodePort"] = 30080
            assert cp.request("POST", "/api/v1/namespaces/default/services", service)[0] == 201
            path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
            body = slice_with(*(p.ip4 for p in pods[:2]))
            for e in body["endpoints"]:
                e["nodeName"] = node.name
            assert cp.request("POST", path, body)[0] == 201

            # 30 connections miss one of 2 endpoints with probability 2 * (1/2)^30 = 1.9e-9,
            # and `eventually` asks again before failing.
            def reached() -> set[str]:
                r = lab.connect("ext", node.ip4, 30080, count=30, timeout=1.0, in_process=True)
                return set(r.endpoints())

            eventually(lambda: reached() == {pods[0].name, pods[1].name}, "traffic to two pods")
            _, current = cp.request("GET", f"{path}/web-1")
            current["endpoints"] = [{"addresses": [pods[2].ip4], "nodeName": node.name}]
            assert cp.request("PUT", f"{path}/web-1", current)[0] == 200
            eventually(lambda: reached() == {pods[2].name}, "traffic to the third pod only")
            assert cp.request("DELETE", "/api/v1/namespaces/default/services/web")[0] == 200

            def refused() -> bool:
                return (
                    lab.connect("ext", node.ip4, 30080, count=1, timeout=1.0, in_process=True).ok
                    == 0
                )

            eventually(refused, "the NodePort to close")
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out


def _service(name: str) -> dict:
    return {**SERVICE, "metadata": {"name": name, "namespace": "default"}}


def test_the_daemon_relists_after_a_restart_into_compacted_history_and_applies_the_gap(
    netns, tmp_path
):
    # Without the watch cache, watches go to etcd, where compaction expires history.
    with start_control_plane(tmp_path / "cp", watch_cache=False) as cp:
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.admin_token)
        path = "/api/v1/namespaces/default/services"
        vips = {}
        for name in ("keep", "doomed"):
            status, svc = cp.request("POST", path, _service(name))
            assert status == 201, svc
            vips[name] = svc["spec"]["clusterIP"]
        proc = subprocess.Popen(
            daemon_argv(kubeconfig, netns, "--node-ip", "192.168.0.1", "--min-sync-period", "0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            eventually(
                lambda: all(f"{v} . tcp . 80" in table(netns) for v in vips.values()),
                "both Services in the kernel",
            )
            # Frozen, the daemon loses its watch to an apiserver restart (so no event of
            # what follows can wait in its socket), misses a deletion and a creation, and
            # etcd forgets that history.
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                cp.restart_apiserver()
                assert cp.request("DELETE", f"{path}/doomed")[0] == 200
                status, later = cp.request("POST", path, _service("later"))
                assert status == 201, later
                cp.compact()
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            # The watch resumes from a compacted version: 410 Gone, a new list, and the
            # difference between that list and what the daemon knew is applied.
            eventually(
                lambda: f"{vips['doomed']} . tcp . 80" not in table(netns),
                "the deletion made during the gap",
                timeout=60,
            )
            later_vip = later["spec"]["clusterIP"]
            eventually(lambda: f"{later_vip} . tcp . 80" in table(netns), "the creation")
            assert f"{vips['keep']} . tcp . 80" in table(netns)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "listing again" in out, out  # the relist after 410, not only a reconnect


def test_service_cidrs_come_from_the_api_including_the_default_one(netns, tmp_path):
    from nftproxy.lab.apiserver import SERVICE_CIDR

    def ranges() -> str:
        return table(netns, "g1-service-cidrs4")

    with start_control_plane(tmp_path / "cp") as cp:
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.admin_token)
        proc = subprocess.Popen(
            daemon_argv(kubeconfig, netns),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # The API server makes a ServiceCIDR of its --service-cluster-ip-range itself.
            eventually(lambda: SERVICE_CIDR in ranges(), "the default ServiceCIDR")
            extra = {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "ServiceCIDR",
                "metadata": {"name": "extra"},
                "spec": {"cidrs": ["10.250.0.0/24"]},
            }
            path = "/apis/networking.k8s.io/v1/servicecidrs"
            assert cp.request("POST", path, extra)[0] == 201
            eventually(lambda: "10.250.0.0/24" in ranges(), "the added ServiceCIDR")
            assert SERVICE_CIDR in ranges()
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "service CIDRs: " in out


def test_a_role_without_service_cidrs_still_serves_services_and_says_why(netns, tmp_path):
    """An operator who kept an older ClusterRole: ServiceCIDRs are taken as none (with a
    warning naming them) rather than holding every Service back."""
    import yaml

    role = yaml.safe_load((DEPLOY / "clusterrole.yaml").read_text())
    role["rules"] = [r for r in role["rules"] if "servicecidrs" not in r["resources"]]
    binding = user_binding(role["metadata"]["name"])
    with start_control_plane(tmp_path / "cp") as cp:
        assert cp.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)[0] == 201
        path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        assert cp.request("POST", path, binding)[0] == 201
        status, svc = cp.request("POST", "/api/v1/namespaces/default/services", SERVICE)
        assert status == 201
        slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        assert cp.request("POST", slices, slice_with("10.244.1.5"))[0] == 201
        kubeconfig = cp.kubeconfig(tmp_path / "kubeconfig", cp.user_token)
        proc = subprocess.Popen(
            daemon_argv(kubeconfig, netns),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            vip = svc["spec"]["clusterIP"]
            eventually(
                lambda: f"{vip} . 80 . 0 : 10.244.1.5 . 8080" in table(netns), "the endpoint"
            )
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert 'cannot list resource "servicecidrs"' in out, out[-2000:]
        assert "going on without" in out
