"""End-to-end checks of the namespace lab itself (no nftproxy rules involved).

They need root to create network namespaces: without it they skip, saying so, unless
CI=true, where they fail instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.lab import External, Lab, LabError, Node, Pod, Started, Topology, default_topology

pytestmark = pytest.mark.kernel


def require_root() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "root (network namespaces need CAP_SYS_ADMIN)"
    elif subprocess.run(["which", "ip"], capture_output=True, check=False).returncode != 0:
        reason = "the `ip` command (iproute2)"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the lab tests, but this machine lacks {reason}")
    pytest.skip(f"the lab needs {reason}")


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    lab = Lab.create(default_topology(nodes=2, pods_per_node=2))
    try:
        lab.start_echo_all(tcp=[8080], udp=[8080], echo_tcp=[9090], max_seconds=300)
        yield lab
    finally:
        lab.destroy()
    assert lab_namespaces(lab.prefix) == []


@pytest.fixture
def fresh_lab() -> Iterator[Lab]:
    """A one-node lab for tests that tear it down themselves (destroyed again anyway)."""
    require_root()
    lab = Lab.create(default_topology(nodes=1, pods_per_node=1))
    try:
        yield lab
    finally:
        lab.destroy()


def test_builds_the_namespaces_and_node_settings(lab: Lab) -> None:
    p = lab.prefix
    expected = {f"{p}-{n}" for n in ("net", "ext", "node-1", "node-2")}
    expected |= {f"{p}-pod-{i}" for i in range(1, 5)}
    assert set(lab.namespaces) == expected
    assert set(lab_namespaces(p)) == expected
    out = lab.exec(
        "node-2", ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]
    )
    assert out.stdout.split() == ["1", "1"]
    assert [pod.node for pod in lab.topology.pods] == ["node-1", "node-1", "node-2", "node-2"]


def test_building_again_changes_nothing(lab: Lab) -> None:
    before = lab.exec("node-1", ["ip", "-br", "addr"]).stdout
    lab.ensure()
    assert lab.exec("node-1", ["ip", "-br", "addr"]).stdout == before
    pod3 = lab.topology.pod("pod-3")
    assert lab.connect("pod-1", pod3.ip4, 8080).ok == 1


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family", [4, 6])
def test_pod_reaches_pod_on_other_node_with_its_own_source(
    lab: Lab, proto: str, family: int
) -> None:
    src, dst = lab.topology.pod("pod-1"), lab.topology.pod("pod-3")
    result = lab.connect(src, dst.ip(family), 8080, proto, count=3)  # type: ignore[arg-type]
    assert result.replies == {f"pod-3 {src.ip(family)}": 3}, result.summary()
    assert result.sources() == {src.ip(family)}
    assert result.endpoints() == {"pod-3": 3}


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_closed_port_is_refused_at_once(lab: Lab, proto: str) -> None:
    dst = lab.topology.pod("pod-4")
    for family in (4, 6):
        result = lab.connect("pod-1", dst.ip(family), 7, proto, count=2, timeout=2.0)  # type: ignore[arg-type]
        assert (result.refused, result.timeouts, result.other) == (2, 0, 0), result.summary()
        assert result.elapsed < 1.0


@pytest.mark.parametrize("family", [4, 6])
def test_external_client_has_no_route_to_pods(lab: Lab, family: int) -> None:
    pod = lab.topology.pod("pod-3")
    result = lab.connect("ext", pod.ip(family), 8080, count=2, timeout=0.5)
    assert result.ok == 0 and result.failures == 2, result.summary()
    assert result.errors == {"ENETUNREACH": 2}


def test_node_talks_to_pods_from_its_link_address(lab: Lab) -> None:
    node = lab.topology.node("node-1")
    for pod_name in ("pod-1", "pod-3"):  # local pod, then a pod on the other node
        pod = lab.topology.pod(pod_name)
        result = lab.connect(node, pod.ip4, 8080, in_process=True)
        assert result.replies == {f"{pod_name} {node.ip4}": 1}, result.summary()


def test_external_client_reaches_nodes_on_the_shared_link(lab: Lab) -> None:
    server = lab.start_echo("node-2", tcp=[8081], udp=[], max_seconds=60)
    try:
        node, ext = lab.topology.node("node-2"), lab.topology.ext
        for ip, src in ((node.ip4, ext.ip4), (node.ip6, ext.ip6)):
            result = lab.connect("ext", ip, 8081)
            assert result.replies == {f"node-2 {src}": 1}, result.summary()
    finally:
        lab.stop(server)
    assert gone(server.pid)


def test_held_session_echoes(lab: Lab) -> None:
    pod1, pod4 = lab.topology.pod("pod-1"), lab.topology.pod("pod-4")
    assert pod4.ip6 is not None
    with lab.open_session(pod1, pod4.ip6, 9090) as session:
        assert (session.endpoint, session.source) == ("pod-4", pod1.ip6)
        assert session.exchange("hello") == "hello"
        assert session.alive()


def test_added_pod_is_reachable_and_removed_pod_is_gone(lab: Lab) -> None:
    pod = lab.add_pod("node-2")
    try:
        assert pod == Pod("pod-5", "node-2", "10.244.2.12", "fd00:244:2::12")
        lab.start_echo(pod, tcp=[8080], udp=[])
        result = lab.connect("pod-1", pod.ip4, 8080, count=2)
        assert result.replies == {"pod-5 10.244.1.10": 2}, result.summary()
    finally:
        lab.remove_pod(pod.name)
    assert f"{lab.prefix}-pod-5" not in lab_namespaces(lab.prefix)
    assert "pod-5" not in lab.topology.names
    result = lab.connect("pod-1", pod.ip4, 8080, timeout=0.3)
    assert result.ok == 0
    again = lab.add_pod("node-2")  # same name and addresses, straight away
    try:
        assert again == pod
        assert lab.connect("pod-1", again.ip4, 7).refused == 1
    finally:
        lab.remove_pod(again.name)


def test_destroy_removes_namespaces_and_processes_and_is_idempotent(fresh_lab: Lab) -> None:
    lab = fresh_lab
    servers: list[Started] = [lab.start_echo("pod-1"), lab.spawn("node-1", ["sleep", "60"])]
    workdir = lab.workdir
    assert lab_namespaces(lab.prefix)
    lab.destroy()
    assert lab_namespaces(lab.prefix) == []
    assert lab.namespaces == []
    assert all(s.proc.returncode is not None and gone(s.pid) for s in servers)
    assert not workdir.exists()
    lab.destroy()
    lab.destroy()
    with pytest.raises(LabError, match="destroyed"):
        lab.exec("node-1", ["true"])


def test_exception_inside_with_still_tears_down() -> None:
    require_root()
    prefix = ""
    with pytest.raises(RuntimeError, match="boom"), Lab.create(default_topology(1, 1)) as lab:
        prefix = lab.prefix
        lab.spawn("pod-1", ["sleep", "60"])
        raise RuntimeError("boom")
    assert prefix and lab_namespaces(prefix) == []


def test_failure_while_building_tears_down_what_was_built() -> None:
    require_root()

    class Broken(Lab):
        def _build_pod(self, pod: Pod) -> None:
            if pod.name == "pod-2":
                raise RuntimeError("no more pods")
            super()._build_pod(pod)

    topology: Topology = default_topology(1, 2)
    prefix = "nftp-" + os.urandom(3).hex()
    with pytest.raises(RuntimeError, match="no more pods"):
        Broken.create(topology, prefix=prefix)
    assert lab_namespaces(prefix) == []


def test_sigterm_tears_the_lab_down(tmp_path: Path) -> None:
    require_root()
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            from nftproxy.lab import Lab, default_topology
            lab = Lab.create(default_topology(1, 1))
            server = lab.start_echo("pod-1", max_seconds=60)
            print(lab.prefix, server.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            prefix, pid = proc.stdout.readline().split()
            assert lab_namespaces(prefix)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == -signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
    assert lab_namespaces(prefix) == []
    deadline = time.monotonic() + 5
    while not gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(int(pid))


def test_extra_addresses_the_router_and_ports_in_greetings() -> None:
    require_root()
    node = Node(
        "n", 1, "192.168.0.10", "2001:db8::10", "10.0.0.0/8", "fd00:10::/32",
        extra_ips=("192.168.0.2", "192.168.1.2", "2001:db8:1::2"),
    )  # fmt: skip
    topo = Topology(
        nodes=(node,),
        pods=(Pod("p", "n", "10.0.0.2", "fd00:10::2"),),
        ext=External(ip4="192.168.0.100", ip6="2001:db8::100", extra_ips=("203.0.113.2",)),
        link4="192.168.0.0/24",
        link6="2001:db8::/64",
        service_cidrs=("172.30.0.0/16",),
        loadbalancer_cidrs=("1.2.3.4/32",),
        ext_router=True,
    )
    with Lab.create(topo) as lab:
        lab.start_echo("n", tcp=[8081], udp=[8081], show_port=True, max_seconds=60)
        # The outside reaches the node's extra addresses, on the link and off it, and
        # sends from its own.
        for dst, src in (("192.168.0.2", "203.0.113.2"), ("192.168.1.2", "203.0.113.2")):
            for proto in ("tcp", "udp"):
                result = lab.connect("ext", dst, 8081, proto, source=src, in_process=True)
                assert result.replies == {f"n:8081 {src}": 1}, result.summary()
        result = lab.connect("ext", "2001:db8:1::2", 8081, in_process=True)
        assert result.replies == {"n:8081 2001:db8::100": 1}, result.summary()
        # A packet for a Service address that the node does not handle goes out to the
        # router and back until its TTL runs out: the pod gets an error, not silence.
        result = lab.connect("p", "172.30.0.50", 80, timeout=5.0, in_process=True)
        assert (result.other, result.errors) == (1, {"EHOSTUNREACH": 1}), result.summary()
