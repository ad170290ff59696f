"""Applying to a real kernel, inside namespaces these tests create."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nftproxy import applying
from nftproxy.config import NodeConfig
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NftError
from nftproxy.ruleset.compile import Names
from nftproxy.ruleset.diff import AppliedState
from tests.support.builders import build, endpoints, ep, port, service
from tests.support.kernel import nft_in
from tests.support.strategies import cidr_lists, cidrs
from tests.support.tables import builder, cluster

pytestmark = pytest.mark.kernel


def test_apply_then_read_back_equals_the_desired_state_element_by_element(netns):
    svcs, slices = cluster(affinity=True)
    backend = open_backend(netns)
    plan = applying.make_plan(builder(svcs, slices), applying.read_applied(backend))
    applying.run_plan(backend, plan)
    kernel = applying.read_applied(backend)
    expected = AppliedState.of(build(svcs, slices, names=Names("g1-")))
    assert kernel is not None
    assert kernel.sets == expected.sets
    assert kernel.chains == expected.chains
    for name, elems in expected.elements.items():
        assert kernel.elements[name] == elems, name
    assert kernel == expected


def test_plan_after_apply_is_empty(netns):
    svcs, slices = cluster()
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    plan = applying.make_plan(builder(svcs, slices), applying.read_applied(backend))
    assert plan.mode == "noop"
    assert plan.transactions == []


def test_an_endpoint_change_is_a_small_incremental_transaction(netns):
    svcs, slices = cluster(3)
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    svcs2, slices2 = cluster(4)
    plan = applying.make_plan(builder(svcs2, slices2), applying.read_applied(backend))
    assert plan.mode == "incremental"
    # web has 3 frontends (ClusterIP, LB IP, NodePort) that each move from pick-3 to pick-4
    # and gain one endpoint element; nothing else in the cluster is touched.
    assert plan.size() < 20
    applying.run_plan(backend, plan)
    assert applying.read_applied(backend) == AppliedState.of(build(svcs2, slices2))


def test_a_sequence_of_changes_ends_equal_to_a_fresh_apply(netns, make_netns):
    backend = open_backend(netns)
    states = [
        cluster(1),
        cluster(5, affinity=True),
        cluster(2),
        cluster(0),
        cluster(3, affinity=True),
    ]
    for svcs, slices in states:
        applying.run_plan(
            backend, applying.make_plan(builder(svcs, slices), applying.read_applied(backend))
        )
    fresh_ns = make_netns()
    fresh = open_backend(fresh_ns)
    applying.run_plan(fresh, applying.make_plan(builder(*states[-1]), None))
    assert applying.read_applied(backend) == applying.read_applied(fresh)
    assert canonical_table(netns) == canonical_table(fresh_ns)


def canonical_table(netns: str) -> list[str]:
    """Every object and rule of the table, without handles, in a stable order: the
    listing order follows history, the content must not."""
    doc = json.loads(nft_in(netns, "-j", "list", "table", "inet", "nftproxy"))
    out = []
    for item in doc["nftables"]:
        for body in item.values():
            if isinstance(body, dict):
                body.pop("handle", None)
                if "elem" in body:
                    body["elem"] = sorted(body["elem"], key=json.dumps)
        out.append(json.dumps(item, sort_keys=True))
    return sorted(out)


def test_a_new_generation_replaces_the_old_one_completely(netns):
    svcs, slices = cluster()
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    plan = applying.make_plan(
        builder(svcs, slices), applying.read_applied(backend), force_generation=True, chunk=10
    )
    assert plan.mode == "generation" and plan.generation == 2
    assert len(plan.transactions) > 3  # setup, several element chunks, flip, cleanup
    applying.run_plan(backend, plan)
    kernel = applying.read_applied(backend)
    assert kernel == AppliedState.of(build(svcs, slices, names=Names("g2-")))
    assert applying.generations(kernel) == {2}


def test_a_change_bigger_than_one_transaction_becomes_a_new_generation(netns):
    svcs, slices = cluster(3)
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    more, more_slices = cluster(6)
    applied = applying.read_applied(backend)
    small = applying.make_plan(builder(more, more_slices), applied)
    assert small.mode == "incremental" and small.size() > 4
    plan = applying.make_plan(builder(more, more_slices), applied, max_incremental=4)
    assert plan.mode == "generation" and plan.generation == 2
    assert "exceed one transaction" in plan.reason
    applying.run_plan(backend, plan)
    assert applying.read_applied(backend) == AppliedState.of(
        build(more, more_slices, names=Names("g2-"))
    )


def test_a_refused_transaction_changes_nothing_traffic_uses(netns):
    svcs, slices = cluster(3)
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    svcs2, slices2 = cluster(1)
    plan = applying.make_plan(builder(svcs2, slices2), applying.read_applied(backend))
    # Someone else removes an element the plan is about to replace: the kernel must refuse
    # the whole transaction, not apply part of it.
    nft_in(
        netns,
        "delete",
        "element",
        "inet",
        "nftproxy",
        "g1-frontends4",
        "{ 10.96.0.10 . tcp . 80 }",
    )
    before = applying.read_applied(backend)
    with pytest.raises(NftError):
        applying.run_plan(backend, plan)
    after = applying.read_applied(backend)
    # The transaction that repoints frontends was refused whole: every element is as it
    # was. (The chains created just before it are not used by anything yet.)
    assert after.elements == before.elements
    # The next plan reads the kernel again and repairs it.
    applying.run_plan(
        backend, applying.make_plan(builder(svcs2, slices2), applying.read_applied(backend))
    )
    assert applying.read_applied(backend) == AppliedState.of(build(svcs2, slices2))


def test_a_table_altered_by_someone_else_is_rebuilt_as_a_new_generation(netns):
    svcs, slices = cluster()
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    nft_in(netns, "add", "rule", "inet", "nftproxy", "g1-services4", "counter")
    plan = applying.make_plan(builder(svcs, slices), applying.read_applied(backend))
    assert plan.mode == "generation"
    applying.run_plan(backend, plan)
    assert applying.read_applied(backend) == AppliedState.of(
        build(svcs, slices, names=Names("g2-"))
    )


OTHER_TABLES = """
table inet other {
    set allowed { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1 } }
    chain input { type filter hook input priority 0; policy accept; ip saddr @allowed counter accept; }
}
table ip nat {
    chain prerouting { type nat hook prerouting priority -100; policy accept; tcp dport 8080 dnat to 10.1.2.3:80; }
}
"""


def test_cleanup_removes_only_nftproxy_and_leaves_other_tables_byte_identical(netns):
    nft_in(netns, "-f", "-", stdin=OTHER_TABLES)
    before = nft_in(netns, "list", "ruleset")
    svcs, slices = cluster(affinity=True)
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    assert "nftproxy" in nft_in(netns, "list", "tables")
    assert applying.cleanup(backend) is True
    assert nft_in(netns, "list", "ruleset") == before
    assert applying.cleanup(backend) is False


def test_new_chains_come_first_and_removals_last(netns):
    """A packet enters a hook in one generation but reads sets at later instants: a verdict
    must never lead to a chain created in the same commit, and what goes away must outlive
    the commit that stops using it."""
    svcs, slices = cluster(4)
    backend = open_backend(netns)
    applying.run_plan(backend, applying.make_plan(builder(svcs, slices), None))
    svcs2, slices2 = cluster(2)
    plan = applying.make_plan(builder(svcs2, slices2), applying.read_applied(backend))
    create, repoint, remove = (str(tx) for tx in plan.transactions)
    assert "add chain inet nftproxy g1-pick4-tcp-2" in create
    assert "add element" not in create
    assert "goto g1-pick4-tcp-2" in repoint
    assert "add chain" not in repoint and "delete chain" not in repoint
    assert "10.96.0.10 . 80 . 3" not in repoint
    assert "delete element inet nftproxy g1-endpoints4-tcp { 10.96.0.10 . 80 . 2, " in remove
    assert "10.96.0.10 . 80 . 3" in remove
    assert "delete chain inet nftproxy g1-pick4-tcp-4" in remove
    applying.run_plan(backend, plan)
    assert applying.read_applied(backend) == AppliedState.of(build(svcs2, slices2))


def test_generation_chunks_hold_every_element_once_and_stay_under_the_limit():
    svcs, slices = cluster(n_endpoints=25)
    desired = build(svcs, slices)
    plan = applying.generation_plan(lambda _: desired, None, 1, "cold", chunk=10)
    seen: list[tuple[str, object]] = []
    for step in plan.transactions:
        ops = step.concrete().ops
        items = [(op.set, k) for op in ops if hasattr(op, "items") for k, _ in op.items]
        seen += items
        frontends = {(s, k[:-1]) for s, k in items if "endpoints" in s}
        # Over the limit only by the buckets of one frontend, which go in together.
        assert len(items) <= 10 or len(frontends) == 1
    expected = [
        (name, key)
        for name, elems in desired.elements.items()
        if "dynamic" not in desired.sets[name].flags
        for key in elems
    ]
    assert sorted(map(repr, seen)) == sorted(map(repr, expected))


def test_interval_set_elements_do_not_drag_map_elements_into_the_text_path():
    from nftproxy.kernel.encoding import element_type

    svcs, slices = cluster(n_endpoints=5)
    desired = build(svcs, slices)
    plan = applying.generation_plan(lambda _: desired, None, 1, "cold")
    text_only = {n for n, s in desired.sets.items() if element_type(s) is None}
    assert any(desired.elements.get(n) for n in text_only)  # the cluster CIDRs, at least
    for step in plan.transactions:
        sets = {op.set for op in step.concrete().ops if hasattr(op, "items")}
        # A transaction of elements goes through netlink only when all its sets can.
        assert not sets & text_only or sets <= text_only


# --- interval sets: what is written is what the kernel lists back ---------------------------


def lb_service(name: str, vip: str, *ranges: str, node_port: int | None = None, v6: str = ""):
    return service(
        name,
        ports=[port(80, node_port=node_port)],
        cluster_ips=(f"10.96.0.{vip.rsplit('.', 1)[1]}", *((f"fd00:96::{v6}",) if v6 else ())),
        load_balancer_ips=(vip, *((f"2001:db8:1::{v6}",) if v6 else ())),
        load_balancer_source_ranges=ranges,
    )


def node_with(*, nodeport: tuple[str, ...] = (), cluster: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig(
        node_name="node-a",
        node_ips=("192.168.0.1", "fd00:192::1"),
        cluster_cidrs=cluster,
        nodeport_addresses=nodeport,
    )


def apply_state(backend, node: NodeConfig, svcs, slices) -> applying.Plan:
    plan = applying.make_plan(
        lambda names: build(svcs, slices, node=node, names=names), applying.read_applied(backend)
    )
    applying.run_plan(backend, plan)
    return plan


def plan_state(backend, node: NodeConfig, svcs, slices) -> applying.Plan:
    return applying.make_plan(
        lambda names: build(svcs, slices, node=node, names=names), applying.read_applied(backend)
    )


def test_every_kind_of_interval_reads_back_exactly_as_compiled(make_netns):
    node = node_with(
        nodeport=("192.168.0.0/24", "fd00:192::/64"),
        cluster=("10.244.0.0/16", "10.244.1.0/24", "0.0.0.0/0", "::ffff:0:0/96", "fd00::/64"),
    )
    cidrs = node_with(cluster=("192.168.0.2/32", "fd00:192::2/128", "10.0.0.0/24", "10.0.1.0/25"))
    svcs = [
        lb_service("a", "198.51.100.1", "203.0.113.7/32", "2001:db8::7/128", v6="1"),
        lb_service("b", "198.51.100.2", "10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8"),
        lb_service("c", "198.51.100.3", "10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/25", "::/0"),
        lb_service("d", "198.51.100.4", "0.0.0.0/0", "::ffff:0:0/96", "::102:304/128", v6="4"),
        lb_service("e", "198.51.100.5", "2001:db8::/32"),  # no IPv4 range: all IPv4 dropped
    ]
    backend = open_backend(make_netns())
    apply_state(backend, cidrs, [], [])
    kernel = applying.read_applied(backend)
    assert kernel == AppliedState.of(build([], [], node=cidrs))
    assert set(kernel.elements["g1-cluster-cidrs4"]) == {
        ("192.168.0.2",),
        ("10.0.0.0/24",),
        ("10.0.1.0/25",),
    }
    backend = open_backend(make_netns())
    apply_state(backend, node, svcs, [])
    kernel = applying.read_applied(backend)
    assert kernel == AppliedState.of(build(svcs, [], node=node))
    assert set(kernel.elements["g1-nodeport-ips4"]) == {("192.168.0.1",)}
    assert set(kernel.elements["g1-nodeport-ips6"]) == {("fd00:192::1",)}
    assert set(kernel.elements["g1-cluster-cidrs6"]) == {("::ffff:0.0.0.0/96",), ("fd00::/64",)}
    allow4 = kernel.elements["g1-firewall-allow4"]
    assert ("198.51.100.1", "tcp", 80, "203.0.113.7") in allow4
    assert ("198.51.100.3", "tcp", 80, "10.0.0.0/23") in allow4
    assert ("2001:db8:1::4", "tcp", 80, "::1.2.3.4") in kernel.elements["g1-firewall-allow6"]
    assert plan_state(backend, node, svcs, []).mode == "noop"


def test_a_host_prefix_survives_any_number_of_applies(netns):
    """The reported bug: a /32 listed back as the bare address looked like a change, and the
    second apply deleted it (all load-balancer traffic dropped)."""
    node = node_with(cluster=("192.168.0.2/32", "fd00:192::2/128"))
    svcs = [lb_service("web", "198.51.100.10", "203.0.113.7/32", node_port=30080)]
    slices = [endpoints("web", [ep("10.244.1.1")])]
    backend = open_backend(netns)
    for _ in range(3):
        apply_state(backend, node, svcs, slices)
        assert plan_state(backend, node, svcs, slices).mode == "noop"
    listed = nft_in(netns, "list", "set", "inet", "nftproxy", "g1-cluster-cidrs4")
    assert "elements = { 192.168.0.2 }" in listed
    listed = nft_in(netns, "list", "set", "inet", "nftproxy", "g1-firewall-allow4")
    assert "198.51.100.10 . tcp . 80 . 203.0.113.7" in listed


@pytest.mark.parametrize(
    "history",
    [
        [("192.168.0.2/32",), ("192.168.0.0/23",), ("192.168.0.2/32",), ("0.0.0.0/0",)],
        [("10.0.0.0/8",), ("10.0.0.0/16",), ("10.0.0.0/8",), ("10.1.0.0/16", "10.2.0.0/16")],
    ],
    ids=["cluster-cidrs", "source-ranges"],
)
def test_an_interval_replaced_by_an_overlapping_one_is_swapped_in_one_transaction(netns, history):
    node_cidrs = history[0][0].startswith("192.168")
    slices = [endpoints("web", [ep("10.244.1.1")])]
    backend = open_backend(netns)

    def state(cidrs):
        if node_cidrs:
            return node_with(cluster=cidrs), [lb_service("web", "198.51.100.10", node_port=30080)]
        return node_with(), [lb_service("web", "198.51.100.10", *cidrs, node_port=30080)]

    apply_state(backend, *state(history[0]), slices)
    for step in history[1:]:
        node, svcs = state(step)
        plan = plan_state(backend, node, svcs, slices)
        assert plan.mode == "incremental" and len(plan.transactions) == 1
        text = str(plan.transactions[0])
        assert text.index("delete element") < text.index("add element")
        applying.run_plan(backend, plan)
        assert applying.read_applied(backend) == AppliedState.of(build(svcs, slices, node=node))


def test_services_sharing_a_load_balancer_ip_and_port_with_nested_ranges_apply(netns):
    svcs = [
        lb_service("a", "198.51.100.10", "10.0.0.0/8"),
        service(
            "b",
            cluster_ips=("10.96.0.11",),
            load_balancer_ips=("198.51.100.10",),
            load_balancer_source_ranges=("10.1.0.0/16",),
        ),
    ]
    backend = open_backend(netns)
    apply_state(backend, node_with(), svcs, [])
    assert plan_state(backend, node_with(), svcs, []).mode == "noop"
    allow = applying.read_applied(backend).elements["g1-firewall-allow4"]
    assert set(allow) == {("198.51.100.10", "tcp", 80, "10.0.0.0/8")}


@st.composite
def node_options(draw: st.DrawFn, families: tuple[frozenset[int], frozenset[int]]) -> NodeConfig:
    """Random node CIDRs, uncollapsed, of the given families (cluster, node-port)."""

    def of(fams: frozenset[int]) -> tuple[str, ...]:
        return tuple(
            c for f in sorted(fams) for c in draw(st.lists(cidrs(f), min_size=1, max_size=3))
        )

    cluster, nodeport = families
    return node_with(cluster=of(cluster), nodeport=of(nodeport))


@st.composite
def interval_states(draw: st.DrawFn, families: tuple[frozenset[int], frozenset[int]]):
    node = draw(node_options(families))
    svcs, slices = [], []
    for i in range(draw(st.integers(1, 3))):
        name = f"svc{i}"
        # Sometimes one address and port for two Services: the winner's firewall applies.
        lb4 = draw(st.sampled_from(["198.51.100.1", f"198.51.100.{i + 2}"]))
        svcs.append(
            service(
                name,
                ports=[port(80, node_port=draw(st.sampled_from([None, 30080 + i])))],
                cluster_ips=(f"10.96.0.{i + 1}", f"fd00:96::{i + 1:x}"),
                load_balancer_ips=(lb4, *draw(st.sampled_from([(), ("2001:db8:1::1",)]))),
                load_balancer_source_ranges=draw(cidr_lists()),
            )
        )
        n = draw(st.integers(0, 2))
        slices.append(endpoints(name, [ep(f"10.244.{i}.{j + 1}") for j in range(n)]))
        slices.append(
            endpoints(name, [ep(f"fd00:244::{i + 1}:{j + 1}") for j in range(n)], family=6)
        )
    return node, svcs, slices


_FAMILY_SETS = st.sampled_from([frozenset(), frozenset({4}), frozenset({6}), frozenset({4, 6})])


@st.composite
def two_states(draw: st.DrawFn):
    """Two states; mostly with the same node CIDR families, so that the second applies as
    an incremental change of interval elements rather than a new generation."""
    families = (draw(_FAMILY_SETS), draw(_FAMILY_SETS))
    first = draw(interval_states(families))
    if draw(st.sampled_from([False, False, False, True])):
        families = (draw(_FAMILY_SETS), draw(_FAMILY_SETS))
    return first, draw(interval_states(families))


@pytest.fixture
def two_backends(make_netns):
    """Two namespaces for a whole property test: each example empties them first."""
    return open_backend(make_netns()), open_backend(make_netns())


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(states=two_states())
def test_any_intervals_apply_then_plan_nothing_and_change_to_what_a_fresh_apply_gives(
    two_backends, states
):
    """apply(X); plan(X) is a no-op. apply(X); apply(Y) ends element by element where
    apply(Y) into an empty namespace does, and plan(Y) is a no-op."""
    (x, y) = states
    here, fresh = two_backends
    applying.cleanup(here)
    applying.cleanup(fresh)
    apply_state(here, *x)
    assert plan_state(here, *x).mode == "noop"
    second = apply_state(here, *y)
    event(f"second apply: {second.mode}")
    assert plan_state(here, *y).mode == "noop"
    apply_state(fresh, *y)
    node, svcs, slices = y
    kernel = applying.read_applied(here)
    expected = AppliedState.of(
        build(svcs, slices, node=node, names=applying.names_for(second.generation))
    )
    assert kernel == expected
    if second.generation == 1:
        assert kernel == applying.read_applied(fresh)
    else:
        assert applying.read_applied(fresh) == AppliedState.of(build(svcs, slices, node=node))
