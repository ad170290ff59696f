"""kube-proxy's packet-flow tables (tests/data/packet_flows/) with real packets.

The lab has upstream's addresses: the node 192.168.0.2 (with its other addresses
192.168.1.2, 192.168.99.11, 2001:db8::1, 2001:db8:1::2), a pod client 10.0.0.2 in the pod
CIDR, every endpoint of the tables as a pod, outside clients 203.0.113.2, 203.0.113.130 and
2600:5200::1, and the Service and load-balancer addresses routed to the node. Every pod
sits on the node under test: which node an endpoint is on is the EndpointSlice's word, which
is all the rules read, while a pod here answers whatever the rules choose.

Each flow is one or more fresh connections from the namespace that owns its source:

- endpoints: the servers that answered, exactly (enough connections that a missed one of k
  equally likely endpoints has a chance below 1e-7), named by pod and the port reached;
- REJECT: refused (TCP reset, ICMP port unreachable); DROP: no answer within a second;
- "" (the proxy leaves the packet alone): the node's own server answers;
- masq: whether the servers saw another source than the client's. The node masquerades to
  192.168.0.10 / 2001:db8::10, addresses no flow sends from, so that shows for the node's
  own connections too.

The outside client is the cluster's router (`Topology.ext_router`): a packet the node lets
out unhandled comes back as an ICMP error, so it cannot pass for a DROP. Upstream's "same
node to LB, SNATted to LB" packets come from the outside client, SNATed there to the
load-balancer IP, as upstream assumes something outside the node does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from nftproxy import applying
from nftproxy.kernel.backend import open_backend
from nftproxy.lab import External, Lab, Node, Pod, Result, Topology
from nftproxy.ruleset.compile import Names, compile_all
from nftproxy.ruleset.desired import DesiredState, Ruleset
from tests.support.kernel import require_kernel
from tests.support.packet_flows import (
    DROP,
    REJECT,
    UNCHANGED,
    Flow,
    Outcome,
    Table,
    endpoint_text,
    join,
)
from tests.support.packet_flows import tables as flow_tables
from tests.support.raw_sctp import crc32c, probe

pytestmark = pytest.mark.kernel

NODE = "test-node"
NODE_IPS = ("192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2")
# What the node masquerades to: its first addresses, which no flow uses.
MASQ_IPS = ("192.168.0.10", "2001:db8::10")
OUTSIDE = ("203.0.113.2", "203.0.113.130", "2600:5200::1")
LB_IPS = ("1.2.3.4", "5.6.7.8", "9.10.11.12")
# Pods, by IPv4 address, with the IPv6 address upstream pairs with it.
PODS = {
    "10.0.0.2": "fd00:10::2",  # the pod client
    "10.180.0.1": "fd00:10:180::1",
    "10.180.0.2": None,
    "10.180.0.3": None,
    "10.180.1.1": None,
    "10.180.1.2": None,
    "10.180.1.3": None,
    "10.180.2.1": "fd00:10:180::2:1",
    "10.0.1.1": None,
    "10.0.1.2": None,
    "10.0.1.3": None,
    "10.0.1.4": None,
    "10.0.1.5": None,
}
POD_TCP = (80, 5353, 8443)  # every target port of the tables
POD_UDP = (53,)
# The node's own server answers what the proxy leaves alone on the node's addresses.
NODE_TCP = (80, 3001, 3002, 3003)

TOPOLOGY = Topology(
    nodes=(
        Node(
            NODE, 1, *MASQ_IPS, pod_cidr4="10.0.0.0/8", pod_cidr6="fd00:10::/32", extra_ips=NODE_IPS
        ),
    ),
    pods=tuple(Pod(f"p-{ip4.replace('.', '-')}", NODE, ip4, ip6) for ip4, ip6 in PODS.items()),
    ext=External(ip4="192.168.0.100", ip6="2001:db8::100", extra_ips=OUTSIDE),
    link4="192.168.0.0/24",
    link6="2001:db8::/64",
    service_cidrs=("172.30.0.0/16", "fd00:10:96::/112", "fd00:172:30::/64"),
    loadbalancer_cidrs=tuple(f"{ip}/32" for ip in LB_IPS),
    ext_router=True,
)

TABLES = flow_tables()
FLOWS = [(table, flow) for table in TABLES for flow in table.flows]
MISSED = 1e-7  # the chance to miss one of the expected endpoints
DROP_TIMEOUT = 1.0


def attempts(k: int) -> int:
    """Connections such that k * (1 - 1/k)^n <= MISSED: each of k equally likely endpoints
    answers at least once, but for a chance below MISSED."""
    if k < 2:
        return 3
    return math.ceil(math.log(MISSED / k) / math.log(1 - 1 / k))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_kernel()
    with Lab.create(TOPOLOGY) as lab:
        for who in (NODE, "ext"):
            # Every refusal counts, so ICMP errors are not rate-limited (namespace settings).
            lab.exec(
                who, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"]
            )
        for pod in TOPOLOGY.pods:
            lab.start_echo(pod, tcp=POD_TCP, udp=POD_UDP, show_port=True)
        lab.start_echo(NODE, tcp=NODE_TCP, udp=(), show_port=True)
        # Upstream's "same node to LB, SNATted to LB": the outside sends from its link address
        # and SNATs that to the load-balancer IP it sends to.
        rules = "".join(
            f"ip saddr {TOPOLOGY.ext.ip4} ip daddr {ip} snat to {ip}\n" for ip in LB_IPS
        )
        lab.exec(
            "ext",
            ["nft", "-f", "-"],
            input="table ip lab-snat {\n chain post {\n"
            " type nat hook postrouting priority srcnat; policy accept;\n"
            f"{rules} }}\n}}\n",
        )
        yield lab


@pytest.fixture(scope="module")
def apply(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Table], None]]:
    """Puts a table's rules on the node, by the code the daemon uses; the flows come in table
    order, so each table is applied once."""
    backend = open_backend(str(lab.ns_path(NODE)))
    applied: list[str] = []

    def apply_table(table: Table) -> None:
        if applied[-1:] == [table.id]:
            return
        services, slices = table.load(tmp_path_factory.mktemp("objects"))
        by_id = {s.id: s for s in services}

        def build(names: Names) -> Ruleset:
            desired = DesiredState(table.node, names, track_changes=False)
            for sid, frag in compile_all(by_id, slices, table.node, names).items():
                desired.set_service(sid, frag)
            return desired.ruleset

        applying.run_plan(backend, applying.make_plan(build, applying.read_applied(backend)))
        applied.append(table.id)

    yield apply_table
    backend.close()


def client_of(source: str) -> tuple[str, str]:
    """The namespace that sends a flow's packets and the address it binds."""
    if source in LB_IPS:
        return "ext", TOPOLOGY.ext.ip4  # SNATed to `source` on the way out
    if source in NODE_IPS:
        return NODE, source
    if source in OUTSIDE:
        return "ext", source
    return TOPOLOGY.pod_by_ip(source).name, source


def connect(lab: Lab, flow: Flow, count: int) -> Result:
    who, source = client_of(flow.source)
    if flow.proto == "sctp":
        return probe(lab, who, flow.dest, flow.port, count, source=source)
    return lab.connect(
        who,
        flow.dest,
        flow.port,
        flow.proto,  # type: ignore[arg-type]
        count,
        timeout=DROP_TIMEOUT,
        source=source,
        in_process=True,
    )


def outcome_of(result: Result, flow: Flow) -> Outcome:
    """What the connections showed, in upstream's terms (see outcome_of in packet_flows)."""
    tokens: set[str] = set()
    masq: set[bool] = set()
    left_alone = False
    for line in result.replies:
        server, _, seen = line.partition(" ")
        name, _, port = server.rpartition(":")
        if name == NODE:
            left_alone = True
        else:
            tokens.add(endpoint_text(TOPOLOGY.pod(name).ip(flow.family), int(port)))
        masq.add(seen != flow.source)
    if result.refused:
        tokens.add(REJECT)
    if result.timeouts:
        tokens.add(DROP)
    if result.other:
        tokens.add("ERROR " + "/".join(sorted(result.errors)))
    if left_alone and tokens:
        tokens.add(UNCHANGED)
    if len(masq) > 1:
        tokens.add("MASQUERADED ONLY SOMETIMES")
    return Outcome(join(tokens), masq == {True})


def observe(lab: Lab, flow: Flow) -> tuple[Outcome, Result]:
    """One connection first, then (when it went as expected) the rest: a broken flow costs
    one timeout, not dozens."""
    expected = flow.expected.output
    total = attempts(len(flow.endpoints)) if flow.endpoints else (2 if expected == DROP else 3)
    result = connect(lab, flow, 1)
    first = outcome_of(result, flow).output
    if total > 1 and (first == expected or first in expected.split(", ")):
        more = connect(lab, flow, total - 1)
        result.replies.update(more.replies)
        result.errors.update(more.errors)
        result.refused += more.refused
        result.timeouts += more.timeouts
        result.other += more.other
    return outcome_of(result, flow), result


def test_the_lab_has_every_address_of_the_tables() -> None:
    for _, flow in FLOWS:
        client_of(flow.source)
        for endpoint in flow.endpoints:
            TOPOLOGY.pod_by_ip(endpoint.rpartition(":")[0].strip("[]"))


@pytest.mark.parametrize(("table", "flow"), FLOWS, ids=[flow.id for _, flow in FLOWS])
def test_real_packets_go_where_kube_proxy_sends_them(
    lab: Lab, apply: Callable[[Table], None], table: Table, flow: Flow
) -> None:
    apply(table)
    outcome, result = observe(lab, flow)
    assert outcome == flow.expected, f"{flow.id}: {result.summary()}"


def test_raw_sctp_checksums_are_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
