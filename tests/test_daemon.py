"""`nftproxy run` as an operator runs it: restarts, crashes, bad input, foreign changes.

Each test starts real daemons (child processes) on manifest directories, in network
namespaces it creates, and judges them by what the kernel holds and what they log.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nftproxy.config import NodeConfig
from nftproxy.daemon import ProxierSink
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.fake import FakeBackend
from nftproxy.kernel.netns import run_in_netns
from nftproxy.lab import Lab, default_topology
from nftproxy.proxier import Proxier
from tests.support.builders import service as model_service
from tests.support.daemon import FEATURES, FEATURES_NODE, run_args
from tests.support.kernel import nft_in, require_kernel
from tests.support.recording import RecordingProxier
from tests.support.samples import dns, frontends, two_files, web

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


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nftproxy", *args, *FEATURES_NODE],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_daemon_refuses_to_start_on_a_missing_manifest_path(netns, tmp_path, start_daemon):
    directory = two_files(tmp_path)
    assert cli("apply", str(directory), "--netns", netns).returncode == 0
    committed = open_backend(netns).generation()
    daemon = start_daemon(*run_args(netns, [tmp_path / "manifestz"]))
    assert daemon.proc.wait(timeout=20) == 1
    assert "manifestz: no such file or directory" in daemon.log
    assert open_backend(netns).generation() == committed


def test_a_watched_directory_that_vanishes_keeps_every_service_until_it_is_back(
    netns, tmp_path, start_daemon
):
    directory = two_files(tmp_path)
    daemon = start_daemon(*run_args(netns, [directory]))
    daemon.wait_for("full sync: generation")
    kernel = open_backend(netns)
    daemon.wait_until(lambda: "10.96.0.53 . udp . 53" in frontends(netns), "dns programmed")
    away = tmp_path / "away"
    directory.rename(away)
    daemon.wait_for("manifests: no such file or directory")
    committed = kernel.generation()
    time.sleep(1.0)  # ten scans without the directory
    assert kernel.generation() == committed
    assert "10.96.0.53 . udp . 53" in frontends(netns) and "10.96.0.10" in frontends(netns)
    away.rename(directory)
    daemon.wait_for("manifests: back")
    (directory / "dns.yaml").write_text(dns(5353))
    daemon.wait_until(lambda: "10.96.0.53 . udp . 5353" in frontends(netns), "the change")
    assert "10.96.0.53 . udp . 53 " not in frontends(netns)


def test_a_file_unreadable_at_start_keeps_what_the_table_holds_for_it(
    netns, tmp_path, start_daemon
):
    directory = two_files(tmp_path)
    assert cli("apply", str(directory), "--netns", netns).returncode == 0
    (directory / "dns.yaml").write_text("kind: [\n")
    (directory / "web.yaml").write_text(web("10.244.1.6"))
    daemon = start_daemon(*run_args(netns, [directory]))
    daemon.wait_for("nothing is deleted until they are fixed")
    endpoints = lambda: nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp")  # noqa: E731
    daemon.wait_until(lambda: "10.244.1.6" in endpoints(), "web's new endpoint")
    # dns.yaml says nothing readable: what the table holds for it stays.
    assert "10.96.0.53 . udp . 53" in frontends(netns)
    (directory / "dns.yaml").write_text(dns(5353))
    daemon.wait_for("every input reads again")
    daemon.wait_until(lambda: "10.96.0.53 . udp . 5353" in frontends(netns), "dns fixed")
    daemon.wait_until(lambda: "udp . 53 " not in frontends(netns), "the old port deleted")


HOSTILE = {
    "brackets.yaml": "[" * 1200 + "]" * 1200,
    "brackets.json": "[" * 100_000 + "]" * 100_000,
    "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
    )
    + "kind: List\napiVersion: v1\nitems: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
    "binary.yaml": "\x00\x01\x02\xff" * 100,
    "big.yaml": "# padding\n" * 200_000,  # 2 MB, over the daemon's 1M limit below
    "not-a-mapping.yaml": "- just\n- a\n- list\n",
}


def test_hostile_files_neither_crash_nor_freeze_the_daemon(netns, tmp_path, start_daemon):
    directory = two_files(tmp_path)
    for name, text in HOSTILE.items():
        (directory / name).write_text(text)
    os.mkfifo(directory / "fifo.yaml")
    (directory / "zero.yaml").symlink_to("/dev/zero")
    (directory / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (directory / "loop.yaml").symlink_to(directory / "loop.yaml")
    daemon = start_daemon(*run_args(netns, [directory], "--max-file-size", "1M"))
    daemon.wait_until(lambda: "10.96.0.53 . udp . 53" in frontends(netns), "the good files")
    log = daemon.log
    for name in [*HOSTILE, "fifo.yaml", "zero.yaml", "dangling.yaml", "loop.yaml"]:
        assert f"{name}:" in log, f"{name} is not reported:\n{log}"
    # Still serving: a change to a good file is picked up.
    (directory / "web.yaml").write_text(web("10.244.1.7"))
    daemon.wait_until(
        lambda: (
            "10.244.1.7" in nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
        ),
        "a change after the hostile files",
    )
    assert daemon.stop(timeout=10) == 0


def service_cidrs(netns: str) -> str:
    return nft_in(netns, "list", "set", "inet", "nftproxy", "g1-service-cidrs4")


SERVICE_CIDR = (
    "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: {name}}}\n"
    "spec: {{cidrs: [{cidrs}]}}\n"
)


def test_service_cidr_objects_and_the_flag_are_followed_without_a_rebuild(
    netns, tmp_path, start_daemon
):
    directory = two_files(tmp_path)
    daemon = start_daemon(*run_args(netns, [directory], "--service-cidr", "10.200.0.0/24"))
    daemon.wait_for("full sync: generation")
    daemon.wait_until(lambda: "10.200.0.0/24" in service_cidrs(netns), "the flag's range")
    (directory / "cidrs.yaml").write_text(
        SERVICE_CIDR.format(name="kubernetes", cidrs="10.96.0.0/16")
    )
    daemon.wait_until(lambda: "10.96.0.0/16" in service_cidrs(netns), "the object's range")
    assert "10.200.0.0/24" in service_cidrs(netns)
    # A broken edit keeps the object's last good range; removing the file removes it.
    (directory / "cidrs.yaml").write_text(
        SERVICE_CIDR.format(name="kubernetes", cidrs="10.96.0.0/99")
    )
    daemon.wait_for(r"ServiceCIDR kubernetes: spec\.cidrs\[0\]: .*\(keeping its last good state\)")
    assert "10.96.0.0/16" in service_cidrs(netns)
    (directory / "cidrs.yaml").unlink()
    daemon.wait_until(lambda: "10.96.0.0/16" not in service_cidrs(netns), "the range to go")
    assert "10.200.0.0/24" in service_cidrs(netns)
    assert generations(netns) == {1}


def test_node_ports_follow_an_address_added_to_the_nodes_namespace(tmp_path, start_daemon):
    """With --nodeport-addresses the daemon serves NodePorts on the addresses its namespace
    has in them: one added while it runs answers once it noticed (rtnetlink), by a change of
    that one element, and stops being served when it goes."""
    require_kernel()
    with Lab.create(default_topology(nodes=1, pods_per_node=1)) as lab:
        lab.start_echo_all(tcp=(8080,), udp=())
        (pod,) = lab.topology.pods
        node = lab.topology.nodes[0]
        ns = lab.ns(node)
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        (manifests / "web.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
            "spec: {type: NodePort, clusterIP: 10.96.0.10, "
            "ports: [{name: http, port: 80, nodePort: 30080}]}\n---\n"
            + web(pod.ip4).split("---\n", 1)[1].replace("namespace: shop", "namespace: default")
        )
        added = "192.168.77.50"  # on the node's link, not yet the node's
        daemon = start_daemon(
            *run_args(
                ns,
                [manifests],
                "--nodeport-addresses",
                f"{added}/32",
                node=["--node-name", node.name, "--cluster-cidr", "10.244.0.0/16"],
            )
        )
        daemon.wait_for(r"full sync: generation")

        def answers() -> bool:
            result = lab.connect("ext", added, 30080, timeout=0.5, in_process=True)
            return result.endpoints() == {pod.name: 1}

        lab.exec(node, ["ip", "addr", "add", f"{added}/24", "dev", "eth0"])
        daemon.wait_until(answers, f"a NodePort on {added}")
        log = daemon.log
        assert f"--nodeport-addresses {added}/32: this node has no IPv4 address there" in log
        assert f"NodePorts are served on IPv4 {added};" in log
        assert f"{added}" in nft_in(ns, "list", "set", "inet", "nftproxy", "g1-nodeport-ips4")
        # One element changed: no second full sync, no new generation.
        assert daemon.log.count("full sync") == 1 and generations(ns) == {1}
        lab.exec(node, ["ip", "addr", "del", f"{added}/24", "dev", "eth0"])
        daemon.wait_until(
            lambda: added not in nft_in(ns, "list", "set", "inet", "nftproxy", "g1-nodeport-ips4"),
            f"{added} no longer served",
        )


def held_port() -> socket.socket:
    """A listening socket on a loopback port the kernel chose: that port is in use."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_a_health_port_in_use_is_logged_by_address_and_taken_once_it_is_free(
    netns, tmp_path, start_daemon
):
    holder = held_port()
    port = holder.getsockname()[1]
    directory = two_files(tmp_path)
    daemon = start_daemon(*run_args(netns, [directory], f"--healthz-bind-address=127.0.0.1:{port}"))
    daemon.wait_for(
        re.escape(f"healthz: cannot listen on 127.0.0.1:{port}: address already in use")
    )
    # As kube-proxy: the rules are served meanwhile.
    daemon.wait_until(lambda: "10.96.0.53 . udp . 53" in frontends(netns), "the rules")
    holder.close()
    daemon.wait_for(re.escape(f"healthz: listening on 127.0.0.1:{port}"), timeout=30)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/livez")
    assert conn.getresponse().status in (200, 503)
    conn.close()
    assert "Traceback" not in daemon.log
    assert daemon.stop() == 0


def test_with_bind_address_hard_fail_a_port_in_use_ends_the_daemon_in_one_line(
    netns, tmp_path, start_daemon
):
    with held_port() as holder:
        port = holder.getsockname()[1]
        daemon = start_daemon(
            *run_args(
                netns,
                [two_files(tmp_path)],
                f"--metrics-bind-address=127.0.0.1:{port}",
                "--bind-address-hard-fail",
            )
        )
        assert daemon.proc.wait(timeout=20) == 1
    assert daemon.log.splitlines()[-1] == (
        f"nftproxy run: metrics: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in daemon.log


@pytest.mark.parametrize(
    ("flags", "config", "detail"),
    [
        ([], None, False),
        (["--v=1"], None, False),
        (["--v=2"], None, True),
        (["-v"], None, True),
        ([], 2, True),
        (["--v=0"], 4, False),
    ],
)
def test_the_daemon_reports_each_file_read_from_verbosity_2(
    netns, tmp_path, start_daemon, flags, config, detail
):
    directory = two_files(tmp_path)
    if config is not None:
        conf = tmp_path / "config.yaml"
        conf.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            f"logging: {{verbosity: {config}}}\n"
        )
        flags = [*flags, f"--config={conf}"]
    daemon = start_daemon(*run_args(netns, [directory], *flags))
    # The files are read before the first sync.
    log = daemon.wait_for("full sync: generation")
    line = f"DETAIL nftproxy.manifests: {directory / 'web.yaml'}: 1 service(s), 1 endpoint slice(s)"
    assert (line in log) == detail, log


def test_kube_proxy_flags_are_understood_as_kube_proxy_means_them(netns, tmp_path, start_daemon):
    directory = two_files(tmp_path)
    node = ["--node-name", "node-a", "--cluster-cidr", "10.244.0.0/16"]
    daemon = start_daemon(
        *run_args(
            netns,
            [directory],
            "--proxy-mode",
            "iptables",
            "--bind-address",
            "192.168.0.7",
            node=node,
        )
    )
    daemon.wait_for("full sync: generation")
    # The bound address is the node's IP, so the NodePorts' primary address.
    daemon.wait_for(r"NodePorts are served on IPv4 192\.168\.0\.7;")
    assert "--proxy-mode iptables is not supported: nftproxy always programs nftables" in daemon.log
    assert daemon.stop() == 0
    assert "10.96.0.10" in frontends(netns)
    # kube-proxy --cleanup: the table goes, and the command exits.
    cleanup = subprocess.run(
        [sys.executable, "-m", "nftproxy", "run", "--cleanup", "--netns", netns],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert "removed table inet nftproxy" in cleanup.stderr
    assert "nftproxy" not in nft_in(netns, "list", "tables")


LOCAL_LB = """\
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalTrafficPolicy: Local
  healthCheckNodePort: 32040
  ports: [{name: http, port: 80, nodePort: 30040}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: default
  labels: {kubernetes.io/service-name: lb}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [POD], nodeName: NODE}]
"""


def test_health_check_node_ports_answer_on_the_nodes_own_node_port_addresses(
    tmp_path, start_daemon
):
    """As kube-proxy: in the node's namespace (the one the daemon programs), on its NodePort
    addresses (the primary IP by default), not elsewhere."""
    require_kernel()
    with Lab.create(default_topology(nodes=1, pods_per_node=1)) as lab:
        (pod,) = lab.topology.pods
        node = lab.topology.nodes[0]
        other = "192.168.77.60"  # a second address of the node, not its primary one
        lab.exec(node, ["ip", "addr", "add", f"{other}/24", "dev", "eth0"])
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        text = LOCAL_LB.replace("POD", pod.ip4).replace("NODE", node.name)
        (manifests / "lb.yaml").write_text(text)
        daemon = start_daemon(
            *run_args(
                lab.ns(node),
                [manifests],
                node=["--node-name", node.name, "--node-ip", node.ip4],
            )
        )
        daemon.wait_for(rf"serving healthCheckNodePort {re.escape(node.ip4)}:32040")

        def get(address: str) -> tuple[int, str]:
            def fetch() -> tuple[int, str]:
                conn = http.client.HTTPConnection(address, 32040, timeout=5)
                try:
                    conn.request("GET", "/")
                    response = conn.getresponse()
                    return response.status, response.read().decode()
                finally:
                    conn.close()

            return run_in_netns(lab.ns_path("ext"), fetch)

        status, body = get(node.ip4)
        assert status == 200 and '"localEndpoints": 1' in body, body
        with pytest.raises(ConnectionRefusedError):
            get(other)


def _sysctl(netns: str | None, name: str) -> int:
    def read() -> int:
        return int(Path("/proc/sys/net/netfilter", name).read_text())

    return read() if netns is None else run_in_netns(f"/run/netns/{netns}", read)


def test_the_daemon_sets_kube_proxys_conntrack_timeouts_in_the_namespace_it_serves(
    netns, tmp_path, start_daemon
):
    # Kubernetes' e2e spec "KubeProxy should set TCP CLOSE_WAIT timeout" expects 1h.
    root_before = {
        n: _sysctl(None, n)
        for n in (
            "nf_conntrack_tcp_timeout_close_wait",
            "nf_conntrack_tcp_timeout_established",
            "nf_conntrack_udp_timeout",
        )
    }
    directory = two_files(tmp_path)
    daemon = start_daemon(*run_args(netns, [directory], "--conntrack-udp-timeout=45s", "--v=2"))
    daemon.wait_for("full sync: generation")
    assert _sysctl(netns, "nf_conntrack_tcp_timeout_close_wait") == 3600
    assert _sysctl(netns, "nf_conntrack_tcp_timeout_established") == 86400
    assert _sysctl(netns, "nf_conntrack_udp_timeout") == 45
    assert "conntrack: nf_conntrack_tcp_timeout_close_wait 60 -> 3600" in daemon.log
    daemon.kill()
    # "0" leaves the value as it is; the machine's own namespace is never touched.
    again = start_daemon(*run_args(netns, [directory], "--conntrack-tcp-timeout-close-wait=0"))
    again.wait_for("full sync: ")
    assert _sysctl(netns, "nf_conntrack_tcp_timeout_close_wait") == 3600
    assert {n: _sysctl(None, n) for n in root_before} == root_before


# --- the Sink in front of the Proxier ----------------------------------------------------------


def test_proxier_sink_waits_for_both_lists_then_forwards_each_kind() -> None:
    proxier = RecordingProxier()
    sink = ProxierSink(proxier)  # type: ignore[arg-type]
    svc_web, svc_api = model_service("web"), model_service("api")
    web, api = svc_web.id, svc_api.id
    sink.replace_services({web: svc_web})
    sink.update_service(api, svc_api)  # held: the slices are not listed yet
    sink.update_service(web, None)
    assert not sink.ready and not proxier.replaced and not proxier.updates
    sink.replace_slices({})
    assert sink.ready
    assert proxier.replaced == [({api: svc_api}, {})]
    # Live: a re-list of one kind goes to the Proxier alone, which keeps the other.
    sink.replace_services({web: svc_web})
    sink.update_slice(("shop", "web-1"), None)
    assert proxier.updates == [
        ("services", None, {web: svc_web}),
        ("slice", ("shop", "web-1"), None),
    ]


def test_proxier_sink_hands_a_whole_picture_over_at_once_and_says_when_it_is_incomplete() -> None:
    proxier = Proxier(FakeBackend(), NodeConfig(node_name="node-a"))
    sink = ProxierSink(proxier)
    svc = model_service("web")
    sink.replace_all({svc.id: svc}, {}, complete=False)
    assert sink.ready and proxier.keep  # nothing is deleted while inputs are unreadable
    sink.replace_all({svc.id: svc}, {})
    assert not proxier.keep


def test_proxier_sink_adds_the_flagged_service_cidrs_to_those_of_the_objects() -> None:
    proxier = Proxier(FakeBackend(), NodeConfig(node_name="node-a"))
    sink = ProxierSink(proxier, flagged_cidrs=("10.100.0.0/16",))
    sink.set_service_cidrs(("10.96.0.0/16", "fd00:96::/112"))
    assert proxier.node.service_cidrs == ("10.96.0.0/16", "10.100.0.0/16", "fd00:96::/112")
    sink.set_service_cidrs(())
    assert proxier.node.service_cidrs == ("10.100.0.0/16",)
