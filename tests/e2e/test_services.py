"""Every Service behaviour proven with real packets through real kernels.

Clients are pods, the nodes themselves and an outside client; servers answer with their pod
name and the source address they saw, so each test asserts what a user would notice: which
endpoints answered, whether the client address survived, refusal versus silence.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from tests.support.e2e_cluster import ECHO, HTTP, Cluster, endpoint, slice_of, svc
from tests.support.stats import chi2_critical, chi2_even, samples_to_see_all

pytestmark = pytest.mark.kernel

NODE1_PODS = ("pod-1", "pod-2", "pod-3")
NODE2_PODS = ("pod-4", "pod-5", "pod-6")
ALL_PODS = NODE1_PODS + NODE2_PODS
# Endpoints are picked at random, so "every endpoint answered" can fail a correct proxy by
# chance. Each such check sends samples_to_see_all(k) connections for k endpoints: then it
# fails with probability at most k * (1 - 1/k)^n <= 1e-7 (tests/support/stats.py), i.e. 99
# connections for 6 endpoints, 43 for 3, 25 for 2.
SEE_6 = samples_to_see_all(6)
SEE_3 = samples_to_see_all(3)
SEE_2 = samples_to_see_all(2)


def web(c: Cluster, pods=ALL_PODS, **kw):
    return svc("web", "10.96.0.10", **kw), slice_of("web", [endpoint(c.pod(p)) for p in pods])


def test_cluster_ip_from_a_pod_reaches_endpoints_on_both_nodes_with_the_pod_address(cluster):
    s, sl = web(cluster)
    cluster.apply([s], [sl])
    result = cluster.lab.connect("pod-1", "10.96.0.10", 80, count=SEE_6, in_process=True)
    assert result.failures == 0
    assert set(result.endpoints()) == set(ALL_PODS)
    pod1 = cluster.pod("pod-1").ip4
    # Hairpin (pod-1 reaching itself) is masqueraded; everyone else sees pod-1's address.
    for reply, _ in result.replies.items():
        name, source = reply.split()
        assert (source == pod1) == (name != "pod-1")


def test_cluster_ip_from_the_node_itself(cluster):
    s, sl = web(cluster, NODE2_PODS)
    cluster.apply([s], [sl])
    result = cluster.lab.connect("node-1", "10.96.0.10", 80, count=SEE_3, in_process=True)
    assert result.failures == 0
    assert set(result.endpoints()) == set(NODE2_PODS)


def test_node_port_from_outside_is_masqueraded_to_the_node_address(cluster):
    s, sl = web(cluster, ports=[("http", "tcp", 80, 30080)])
    cluster.apply([s], [sl])
    for node in ("node-1", "node-2"):
        result = cluster.lab.connect(
            "ext", cluster.node_ip(node), 30080, count=SEE_6, in_process=True
        )
        assert result.failures == 0
        assert set(result.endpoints()) == set(ALL_PODS)
        assert cluster.ext_ip not in result.sources()


def test_load_balancer_ingress_and_external_ips_from_outside(cluster):
    s, sl = web(cluster, load_balancer_ips=("198.51.100.10",), external_ips=("198.51.100.20",))
    cluster.apply([s], [sl])
    for vip in ("198.51.100.10", "198.51.100.20"):
        result = cluster.lab.connect("ext", vip, 80, count=SEE_6, in_process=True)
        assert result.failures == 0
        assert set(result.endpoints()) == set(ALL_PODS)


def test_several_ports_on_one_service_reach_their_own_target_ports(cluster):
    s = svc("multi", "10.96.0.11", ports=[("a", "tcp", 80, None), ("b", "tcp", 81, None)])
    sl = slice_of(
        "multi",
        [endpoint(cluster.pod("pod-4"))],
        ports=[("a", "tcp", HTTP), ("b", "tcp", ECHO)],
    )
    cluster.apply([s], [sl])
    assert cluster.lab.connect("pod-1", "10.96.0.11", 80, in_process=True).endpoints() == {
        "pod-4": 1
    }
    with cluster.lab.open_session("pod-1", "10.96.0.11", 81) as session:
        assert session.endpoint == "pod-4"
        assert session.exchange("hello") == "hello"


def test_udp_service(cluster):
    s = svc("dns", "10.96.0.53", ports=[("dns", "udp", 53, 30053)])
    sl = slice_of("dns", [endpoint(cluster.pod(p)) for p in ALL_PODS], ports=[("dns", "udp", HTTP)])
    cluster.apply([s], [sl])
    result = cluster.lab.connect(
        "pod-2", "10.96.0.53", 53, proto="udp", count=SEE_6, in_process=True
    )
    assert result.failures == 0 and set(result.endpoints()) == set(ALL_PODS)
    result = cluster.lab.connect(
        "ext", cluster.node_ip("node-2"), 30053, proto="udp", count=SEE_6, in_process=True
    )
    assert result.failures == 0 and set(result.endpoints()) == set(ALL_PODS)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_service_without_endpoints_is_refused_at_once(cluster, proto):
    s = svc("empty", "10.96.0.99", ports=[("p", proto, 80, 30099)])
    cluster.apply([s], [])
    count = 5
    for who, host, port in (("pod-1", "10.96.0.99", 80), ("ext", cluster.node_ip("node-1"), 30099)):
        result = cluster.lab.connect(
            who, host, port, proto=proto, count=count, timeout=3.0, in_process=True
        )
        assert result.refused == count, result.summary()
        assert result.elapsed < 3.0  # all refused well before a single timeout


def test_connections_spread_evenly_over_endpoints(cluster):
    pods = ("pod-1", "pod-2", "pod-4", "pod-5")
    s, sl = web(cluster, pods, ports=[("http", "tcp", 80, 30080)])
    cluster.apply([s], [sl])
    result = cluster.lab.connect(
        "ext", cluster.node_ip("node-1"), 30080, count=1200, in_process=True
    )
    assert result.failures == 0
    counts = result.endpoints()
    # Pearson's chi-squared with 3 degrees of freedom exceeds chi2_critical(3) = 35.4 with
    # probability 1e-7; summing the exact multinomial over all outcomes of 1200 connections
    # gives 1.07e-7, so the approximation holds this far out.
    assert chi2_even(counts[p] for p in pods) < chi2_critical(3), counts


def test_session_affinity_keeps_a_client_on_one_endpoint_and_spreads_clients(cluster):
    # Dual-stack, so that each pod is two clients: 12 first picks among 6 endpoints all land
    # on one with probability 6 * (1/6)^12 = 2.8e-9 (with the 6 IPv4 clients alone: 1.3e-4).
    vips = {4: "10.96.0.10", 6: "fd00:96::10"}
    s = svc("web", vips=tuple(vips.values()), affinity_timeout=600)
    slices = [
        slice_of("web", [endpoint(cluster.pod(p), family=f) for p in ALL_PODS], family=f)
        for f in vips
    ]
    cluster.apply([s], slices)
    chosen = {}
    for client in ALL_PODS:
        for family, vip in vips.items():
            result = cluster.lab.connect(client, vip, 80, count=15, in_process=True)
            assert result.failures == 0
            assert len(result.endpoints()) == 1, (client, vip, result.endpoints())
            chosen[client, family] = next(iter(result.endpoints()))
    assert len(set(chosen.values())) > 1, chosen


def test_external_policy_local_reaches_only_local_endpoints_and_keeps_the_client_address(cluster):
    s, sl = web(
        cluster,
        ports=[("http", "tcp", 80, 30080)],
        load_balancer_ips=("198.51.100.10",),
        external_policy_local=True,
    )
    cluster.apply([s], [sl])
    for host, port, node_pods in (
        (cluster.node_ip("node-2"), 30080, NODE2_PODS),
        ("198.51.100.10", 80, NODE1_PODS),  # the outside routes the LB range to node-1
    ):
        result = cluster.lab.connect("ext", host, port, count=SEE_3, in_process=True)
        assert result.failures == 0
        assert set(result.endpoints()) == set(node_pods)
        assert result.sources() == {cluster.ext_ip}
    # Pods still reach every endpoint through the same addresses (kube-proxy's short-circuit).
    from_pod = cluster.lab.connect("pod-1", "198.51.100.10", 80, count=SEE_6, in_process=True)
    assert set(from_pod.endpoints()) == set(ALL_PODS)


def test_external_policy_cluster_masquerades(cluster):
    s, sl = web(cluster, NODE2_PODS, load_balancer_ips=("198.51.100.10",))
    cluster.apply([s], [sl])
    result = cluster.lab.connect("ext", "198.51.100.10", 80, count=20, in_process=True)
    assert result.failures == 0
    assert result.sources() == {cluster.node_ip("node-1")}


def test_a_pod_reaches_itself_through_its_service(cluster):
    s, sl = web(cluster, ("pod-3",))
    cluster.apply([s], [sl])
    result = cluster.lab.connect("pod-3", "10.96.0.10", 80, count=10, in_process=True)
    assert result.failures == 0 and result.endpoints() == {"pod-3": 10}


def test_load_balancer_source_ranges_admit_the_listed_source_and_drop_others(cluster):
    allowed = svc(
        "open",
        "10.96.0.21",
        load_balancer_ips=("198.51.100.21",),
        load_balancer_source_ranges=(f"{cluster.ext_ip}/32",),
    )
    denied = svc(
        "closed",
        "10.96.0.22",
        load_balancer_ips=("198.51.100.22",),
        load_balancer_source_ranges=("203.0.113.0/24",),
    )
    slices = [slice_of(n, [endpoint(cluster.pod("pod-4"))]) for n in ("open", "closed")]
    cluster.apply([allowed, denied], slices)
    ok = cluster.lab.connect("ext", "198.51.100.21", 80, count=5, in_process=True)
    assert ok.endpoints() == {"pod-4": 5}
    dropped = cluster.lab.connect("ext", "198.51.100.22", 80, count=2, timeout=1.0, in_process=True)
    assert dropped.timeouts == 2 and dropped.refused == 0


def test_internal_policy_local_keeps_pod_traffic_on_the_node(cluster):
    s, sl = web(cluster, internal_policy_local=True)
    cluster.apply([s], [sl])
    result = cluster.lab.connect("pod-4", "10.96.0.10", 80, count=SEE_3, in_process=True)
    assert result.failures == 0 and set(result.endpoints()) == set(NODE2_PODS)


def test_terminating_endpoints_are_only_a_fallback(cluster):
    draining = [
        endpoint(cluster.pod(p), ready=False, serving=True, terminating=True) for p in NODE1_PODS
    ]
    ready = [endpoint(cluster.pod("pod-4"))]
    s = svc("web", "10.96.0.10")
    cluster.apply([s], [slice_of("web", draining + ready)])
    assert set(
        cluster.lab.connect("pod-5", "10.96.0.10", 80, count=20, in_process=True).endpoints()
    ) == {"pod-4"}
    cluster.apply([s], [slice_of("web", draining)])
    result = cluster.lab.connect("pod-5", "10.96.0.10", 80, count=SEE_3, in_process=True)
    assert result.failures == 0 and set(result.endpoints()) == set(NODE1_PODS)


def test_an_ipv6_service_works_next_to_an_ipv4_one(cluster):
    v4 = svc("v4", "10.96.0.40")
    v6 = svc("v6", "fd00:96::40")
    slices = [
        slice_of("v4", [endpoint(cluster.pod("pod-4"))]),
        slice_of("v6", [endpoint(cluster.pod(p), family=6) for p in ("pod-5", "pod-6")], family=6),
    ]
    cluster.apply([v4, v6], slices)
    assert cluster.lab.connect("pod-1", "10.96.0.40", 80, count=5, in_process=True).endpoints() == {
        "pod-4": 5
    }
    result = cluster.lab.connect("pod-1", "fd00:96::40", 80, count=SEE_2, in_process=True)
    assert result.failures == 0 and set(result.endpoints()) == {"pod-5", "pod-6"}
    assert result.sources() == {cluster.pod("pod-1").ip6}


def test_endpoint_churn_under_load_breaks_no_new_or_established_connection(cluster):
    """200 random endpoint additions and removals through the daemon's partial syncs while a
    client keeps connecting; the Service always keeps at least one endpoint."""
    proxiers = {n: cluster.proxier(n) for n in ("node-1", "node-2")}
    s = svc("web", "10.96.0.10", ports=[("http", "tcp", 80, None), ("echo", "tcp", 81, None)])
    current = set(ALL_PODS)

    def publish():
        sl = slice_of(
            "web",
            [endpoint(cluster.pod(p)) for p in sorted(current)],
            ports=[("http", "tcp", HTTP), ("echo", "tcp", ECHO)],
        )
        for p in proxiers.values():
            p.replace_all({s.id: s}, {(sl.namespace, sl.name): sl})
            p.sync()

    publish()
    sessions = [cluster.lab.open_session("pod-1", "10.96.0.10", 81) for _ in range(12)]
    stop = threading.Event()
    totals = Counter()

    def load():
        while not stop.is_set():
            r = cluster.lab.connect(
                "pod-2", "10.96.0.10", 80, count=10, timeout=5.0, in_process=True
            )
            totals["ok"] += r.ok
            totals["failed"] += r.failures
            totals.update(r.errors)
            totals["timeouts"] += r.timeouts

    client = threading.Thread(target=load)
    client.start()
    rng = random.Random(7)
    kept = set(ALL_PODS)  # endpoints never removed, whose held connections must survive
    try:
        for _ in range(200):
            if len(current) > 1 and (rng.random() < 0.5 or len(current) == len(ALL_PODS)):
                gone = rng.choice(sorted(current))
                current.discard(gone)
                kept.discard(gone)
            else:
                current.add(rng.choice(sorted(set(ALL_PODS) - current)))
            publish()
            time.sleep(0.01)
        stop.set()
        client.join()
        assert totals["failed"] == 0, totals
        assert totals["ok"] > 100
        survivors = [x for x in sessions if x.endpoint in kept]
        for session in survivors:
            assert session.exchange("still there") == "still there"
    finally:
        stop.set()
        client.join()
        for session in sessions:
            session.close()


def test_traffic_keeps_flowing_while_the_daemon_restarts(cluster, tmp_path):
    """`nftproxy run --manifests` in each node's namespace; SIGTERM leaves the rules, a new
    daemon compares the table with its inputs and takes over without rewriting it, and no
    connection fails."""
    import sys

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "web.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}\n"
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n"
        "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n"
        + "".join(
            f"- {{addresses: [{cluster.pod(p).ip4}], nodeName: {cluster.pod(p).node}}}\n"
            for p in ALL_PODS
        )
    )

    def daemon(node: str):
        n = cluster.lab.topology.node(node)
        return cluster.lab.spawn(
            node,
            [
                sys.executable,
                "-m",
                "nftproxy",
                "run",
                "--manifests",
                str(manifests),
                "--node-name",
                node,
                "--node-ip",
                n.ip4,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--min-sync-period",
                "0.1",
                "--poll-interval",
                "0.1",
            ],
        )

    cluster.apply([], [])  # start from an empty table: the daemon builds it
    first = daemon("node-1")
    node_ip = cluster.node_ip("node-1")
    deadline = time.monotonic() + 20
    while not cluster.lab.connect("ext", node_ip, 30080, timeout=0.5, in_process=True).ok:
        assert time.monotonic() < deadline, "the daemon never programmed node-1"
        time.sleep(0.2)
    stop = threading.Event()
    totals = Counter()

    def load():
        while not stop.is_set():
            r = cluster.lab.connect("ext", node_ip, 30080, count=10, timeout=5.0, in_process=True)
            totals["ok"] += r.ok
            totals["failed"] += r.failures

    def generations() -> set[int]:
        return generations_of(cluster, "node-1")

    # Traffic flows from the flip to the new generation on; the old one goes a commit later.
    while len(generations()) != 1:
        assert time.monotonic() < deadline, f"generations left behind: {generations()}"
        time.sleep(0.05)
    (before,) = generations()
    client = threading.Thread(target=load)
    client.start()
    try:
        time.sleep(0.5)
        cluster.lab.stop(first)  # SIGTERM: rules stay
        time.sleep(1.0)
        between = totals["ok"]
        second = daemon("node-1")
        time.sleep(3.0)  # the new daemon's full sync compares the table under load
        cluster.lab.stop(second)
    finally:
        stop.set()
        client.join()
    assert totals["failed"] == 0, totals
    assert totals["ok"] > between > 0
    assert generations() == {before}


def generations_of(cluster, node: str) -> set[int]:
    import re

    listing = cluster.lab.exec(node, ["nft", "list", "table", "inet", "nftproxy"]).stdout
    return {int(g) for g in re.findall(r"chain g(\d+)-services4", listing)}


def _udp_client(cluster, sport: int):
    """pod-1's UDP socket on a fixed source port (one conntrack entry for all it sends),
    and a function asking 10.96.0.53:53 which endpoint answers."""
    import socket as sockets

    client = cluster.lab.socket("pod-1", sockets.AF_INET, sockets.SOCK_DGRAM)
    try:
        client.bind(("0.0.0.0", sport))
    except OSError:
        client.close()
        raise
    client.settimeout(2.0)

    def ask() -> str:
        client.sendto(b"ping\n", ("10.96.0.53", 53))
        return client.recv(200).decode().split()[0]

    return client, ask


def test_a_udp_client_moves_on_when_its_endpoint_is_removed(cluster):
    """UDP has no end of connection: without clearing conntrack, a client with a fixed
    source port would keep talking to a removed endpoint. The daemon's sync clears it."""

    from nftproxy.conntrack import ConntrackCleaner

    proxier = cluster.proxier("node-1")
    cleaner = ConntrackCleaner(str(cluster.lab.ns_path("node-1")))
    proxier.clear_stale_udp = cleaner.clear_stale
    s = svc("dns", "10.96.0.53", ports=[("dns", "udp", 53, None)])

    def publish(pods):
        sl = slice_of("dns", [endpoint(cluster.pod(p)) for p in pods], ports=[("dns", "udp", HTTP)])
        proxier.replace_all({s.id: s}, {(sl.namespace, sl.name): sl})
        proxier.sync()

    publish(("pod-4", "pod-5"))
    client, ask = _udp_client(cluster, 41999)
    try:
        first = ask()
        assert all(ask() == first for _ in range(3))  # one conntrack entry, one endpoint
        publish(tuple(p for p in ("pod-4", "pod-5") if p != first))
        assert ask() != first
    finally:
        client.close()
        cleaner.close()


def test_addresses_written_with_leading_zeros_are_read_as_decimal(cluster):
    """A Service and EndpointSlice stored with leading zeros (Kubernetes still accepts them)
    work as kube-proxy reads them: 010 is ten, not octal eight."""
    from nftproxy.kube import objects

    pod = cluster.pod("pod-4")
    zeros = ".".join(f"{int(part):03d}" for part in pod.ip4.split("."))  # 010.244.002.010
    meta = {"name": "zeros", "namespace": "default"}
    s = objects.to_service(
        objects.from_builtins(
            {"metadata": meta, "spec": {"clusterIP": "10.096.000.077", "ports": [{"port": 80}]}},
            objects.RawService,
        )
    )
    sl = objects.to_slice(
        objects.from_builtins(
            {
                "metadata": {**meta, "labels": {"kubernetes.io/service-name": "zeros"}},
                "addressType": "IPv4",
                "ports": [{"port": HTTP}],
                "endpoints": [{"addresses": [zeros], "nodeName": pod.node}],
            },
            objects.RawEndpointSlice,
        )
    )
    cluster.apply([s], [sl])
    result = cluster.lab.connect("pod-1", "10.96.0.77", 80, count=3, in_process=True)
    assert result.endpoints() == {"pod-4": 3}, result.summary()


@pytest.mark.parametrize("local", [False, True], ids=["cluster-policies", "local-policies"])
def test_udp_clients_that_started_before_their_service_are_answered_once_it_is_programmed(
    cluster, local
):
    """A datagram sent before its Service is programmed leaves a conntrack entry without
    translation (the node's own port answered, or the packet was routed on as it was), and
    every later datagram from that source port refreshes it: without clearing it the client
    would never reach the Service. Found by Kubernetes' Conntrack e2e specs."""
    import socket as sockets

    from nftproxy.conntrack import ConntrackCleaner

    proxier = cluster.proxier("node-1")
    cleaner = ConntrackCleaner(str(cluster.lab.ns_path("node-1")))
    proxier.clear_stale_udp = cleaner.clear_stale
    proxier.replace_all({}, {})
    proxier.sync()
    node_ip = cluster.node_ip("node-1")
    # (client, destination): the NodePort from outside, the ClusterIP from the node itself
    # and from a pod on it.
    base = 42010 if local else 42000  # source ports of their own: no earlier entries
    clients = [
        ("ext", (node_ip, 30053), base + 1),
        ("node-1", ("10.96.0.53", 53), base + 2),
        ("pod-1", ("10.96.0.53", 53), base + 3),
    ]
    sockets_ = []
    try:
        for who, dest, sport in clients:
            sock = cluster.lab.socket(who, sockets.AF_INET, sockets.SOCK_DGRAM)
            sockets_.append(sock)
            sock.bind(("0.0.0.0", sport))
            sock.settimeout(1.0)
            sock.sendto(b"ping\n", dest)
        for _, dest, sport in clients:
            # A datagram from another namespace reaches node-1 a moment after sendto().
            deadline = time.monotonic() + 5
            while not (flows := [f for f in cleaner.list_flows("udp") if f.orig_sport == sport]):
                assert time.monotonic() < deadline, f"no conntrack entry from port {sport}"
                time.sleep(0.05)
            assert [(f.reply_src, f.reply_sport) for f in flows] == [dest]  # not NATed

        # With Local policies the endpoint is on node-1, where all three clients arrive.
        s = svc(
            "dns",
            "10.96.0.53",
            ports=[("dns", "udp", 53, 30053)],
            internal_policy_local=local,
            external_policy_local=local,
        )
        sl = slice_of("dns", [endpoint(cluster.pod("pod-2"))], ports=[("dns", "udp", HTTP)])
        proxier.replace_all({s.id: s}, {(sl.namespace, sl.name): sl})
        proxier.sync()
        for (who, dest, _), sock in zip(clients, sockets_, strict=True):
            sock.sendto(b"ping\n", dest)
            answer = sock.recv(200).decode().split()[0]
            assert answer == "pod-2", f"{who} -> {dest}"
    finally:
        for sock in sockets_:
            sock.close()
        cleaner.close()


def test_a_restarted_daemon_moves_udp_clients_off_endpoints_changed_while_it_was_down(cluster):
    """A full sync (a start, say) cannot know what changed before it: it clears every UDP
    entry toward a frontend that is answered by anything but its current endpoints."""

    from nftproxy.conntrack import ConntrackCleaner

    cleaner = ConntrackCleaner(str(cluster.lab.ns_path("node-1")))
    s = svc("dns", "10.96.0.53", ports=[("dns", "udp", 53, None)])

    def daemon_serving(pod: str):
        proxier = cluster.proxier("node-1")  # a new one: its first sync is a full one
        proxier.clear_stale_udp = cleaner.clear_stale
        sl = slice_of("dns", [endpoint(cluster.pod(pod))], ports=[("dns", "udp", HTTP)])
        proxier.replace_all({s.id: s}, {(sl.namespace, sl.name): sl})
        proxier.sync()

    client, ask = _udp_client(cluster, 42031)
    try:
        daemon_serving("pod-4")
        assert ask() == "pod-4"
        daemon_serving("pod-5")  # pod-4 still runs: only the entry keeps the client there
        assert ask() == "pod-5"
    finally:
        client.close()
        cleaner.close()
