"""Properties over random clusters.

1. For every frontend and every kind of client, `explain` over the compiled ruleset reaches
   exactly the endpoints the model selects, each with probability 1/n (or is dropped by the
   load balancer's source ranges, as the model says).
2. Any sequence of cluster states, applied as incremental diffs (only changed Services are
   recompiled) to a table, ends exactly where a fresh full compile of the last state does.
"""

from __future__ import annotations

import ipaddress
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftproxy.applying import generation_plan
from nftproxy.kernel.fake import FakeBackend
from nftproxy.model import (
    Endpoint,
    EndpointSlice,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    SlicePort,
)
from nftproxy.ruleset.compile import Names, compile_service, group_slices
from nftproxy.ruleset.desired import DesiredState
from nftproxy.ruleset.diff import AppliedState, diff
from nftproxy.selection import select
from tests.support.builders import NODE, build, send
from tests.support.strategies import cidr_lists

NODES = ("node-a", "node-b")


@st.composite
def endpoint_lists(draw: st.DrawFn, family: int) -> tuple[Endpoint, ...]:
    n = draw(st.integers(0, 5))
    hosts = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n, unique=True))
    out = []
    for h in hosts:
        ip = f"10.244.{h % 3}.{h}" if family == 4 else f"fd00:244::{h:x}"
        ready = draw(st.booleans())
        terminating = draw(st.booleans()) if not ready else False
        out.append(
            Endpoint(
                ip,
                node_name=draw(st.sampled_from(NODES)),
                ready=ready,
                serving=ready or draw(st.booleans()),
                terminating=terminating,
                zone_hints=draw(
                    st.sampled_from([None, frozenset({"zone-1"}), frozenset({"zone-2"})])
                ),
            )
        )
    return tuple(out)


@st.composite
def clusters(draw: st.DrawFn, shared_lb: bool = False) -> tuple[list[Service], list[EndpointSlice]]:
    """Random Services with slices; with shared_lb, Services may claim one load balancer
    IP together (a conflict: the first by name wins its frontends and endpoint buckets)."""
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    for i in range(draw(st.integers(1, 4))):
        name = f"svc{i}"
        dual = draw(st.booleans())
        protos = draw(
            st.lists(st.sampled_from(["tcp", "udp"]), min_size=1, max_size=2, unique=True)
        )
        ports = tuple(
            ServicePort(
                f"p{j}",
                Protocol(proto),
                80 + j,
                draw(st.sampled_from([None, 30000 + 10 * i + j])),
            )
            for j, proto in enumerate(protos)
        )
        lb_choices = [(), (f"198.51.100.{i + 1}",)] + ([("198.51.100.99",)] if shared_lb else [])
        lb = draw(st.sampled_from(lb_choices))
        svc = Service(
            ServiceName("default", name),
            ports,
            cluster_ips=(f"10.96.0.{i + 1}", *((f"fd00:96::{i + 1:x}",) if dual else ())),
            load_balancer_ips=lb,
            # Nested, adjacent, duplicate, /0, host prefixes, both families.
            load_balancer_source_ranges=draw(cidr_lists()) if lb else (),
            external_policy_local=draw(st.booleans()),
            internal_policy_local=draw(st.booleans()),
            families=(4, 6) if dual else (4,),
        )
        services.append(svc)
        for fam in svc.families:
            eps = draw(endpoint_lists(fam))
            slices.append(
                EndpointSlice(
                    "default",
                    f"{name}-{fam}",
                    name,
                    fam,
                    tuple(SlicePort(p.name, p.protocol, 8000 + k) for k, p in enumerate(ports)),
                    eps,
                )
            )
    return services, slices


def _expect(backends: tuple, any_usable: bool) -> tuple[dict[str, Fraction], str | None]:
    if not backends:
        return {}, "reject" if not any_usable else "drop"
    n = len(backends)
    return {f"{b.ip}:{b.port}": Fraction(1, n) for b in backends}, None


def _admitted(svc: Service, source: str, node_ips: tuple[str, ...] = NODE.node_ips) -> bool:
    """kube-proxy's firewall: the ranges of the source's family, if any, admit it; so does
    a load-balancer IP when they hold the node's primary IP of that family."""
    addr = ipaddress.ip_address(source)
    nets = [ipaddress.ip_network(r) for r in svc.load_balancer_source_ranges]
    ranges = [n for n in nets if n.version == addr.version]
    if not ranges or any(addr in n for n in ranges):
        return True
    same = [ipaddress.ip_address(a) for a in node_ips]
    primary = next((a for a in same if a.version == addr.version), None)
    return source in svc.load_balancer_ips and any(primary in n for n in ranges)


def _check(result, backends: tuple, any_usable: bool, *, dropped: bool = False) -> None:
    if dropped:
        assert result.outcomes() == {"drop": 1}
        return
    expected, verdict = _expect(backends, any_usable)
    got = {f"{b.ip}:{b.port}": p for b, p in result.endpoints().items()}
    assert got == expected
    if verdict:
        assert result.outcomes() == {verdict: 1}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(clusters())
def test_explain_over_the_ruleset_reaches_exactly_the_selected_endpoints(cluster):
    services, slices = cluster
    rs = build(services, slices)
    by_service = group_slices(slices)
    for svc in services:
        for fam in svc.families:
            pod = "10.244.0.200" if fam == 4 else "fd00:244::200"
            outside = "203.0.113.9" if fam == 4 else "2001:db8::9"
            node_ip = "192.168.0.1" if fam == 4 else "fd00:192::1"
            for p in svc.ports:
                sel = select(p, by_service.get(svc.id, []), fam, NODE)
                proto = p.protocol.value
                internal = sel.local if svc.internal_policy_local else sel.cluster
                external = sel.local if svc.external_policy_local else sel.cluster
                vip = next(ip for ip in svc.cluster_ips if (":" in ip) == (fam == 6))
                _check(send(rs, vip, p.port, src=pod, proto=proto), internal, sel.any_usable)
                for lb in svc.load_balancer_ips:
                    if (":" in lb) != (fam == 6):
                        continue
                    _check(
                        send(rs, lb, p.port, src=outside, proto=proto),
                        external,
                        sel.any_usable,
                        dropped=not _admitted(svc, outside),
                    )
                    # From inside the cluster, Local external policy does not apply.
                    if sel.cluster:
                        _check(
                            send(rs, lb, p.port, src=pod, proto=proto),
                            sel.cluster,
                            True,
                            dropped=not _admitted(svc, pod),
                        )
                if p.node_port:
                    at_node = send(rs, node_ip, p.node_port, src=outside, proto=proto)
                    _check(at_node, external, sel.any_usable)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[list[Service], list[EndpointSlice]]]:
    return [draw(clusters(shared_lb=True)) for _ in range(draw(st.integers(2, 5)))]


def _fragments(services, slices, names):
    by_service = group_slices(slices)
    return {s.id: compile_service(s, by_service.get(s.id, ()), NODE, names) for s in services}


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(histories())
def test_incremental_diffs_of_any_history_equal_a_fresh_full_compile(history):
    names = Names()
    desired = DesiredState(NODE, names)
    table = FakeBackend()
    previous: dict = {}
    for services, slices in history:
        frags = _fragments(services, slices, names)
        for sid in previous.keys() - frags.keys():
            desired.set_service(sid, None)
        for sid, frag in frags.items():
            if previous.get(sid) != frag:
                desired.set_service(sid, frag)
        previous = frags
        scope = desired.take_changes()
        if table.state is None:
            # The first state goes in as a generation build, like a cold start.
            for tx in generation_plan(lambda _: desired.ruleset, None, 1, "cold").transactions:
                table.apply(tx)
        else:
            # As the daemon does: compare only what changed (O(change), not O(table)).
            table.apply(diff(desired.ruleset, table.state, scope))
        fresh = build(services, slices, names=names)
        assert table.state == AppliedState.of(fresh)
        assert not diff(fresh, table.state)
