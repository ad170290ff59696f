"""kube-proxy's own packet-flow tables, checked on our compiled ruleset by `explain`'s
evaluator: for every packet, the endpoints it may reach (each with a chance above zero,
nothing else), or that it is refused, dropped or left alone, and whether it is masqueraded.

The tables are upstream's (tests/data/packet_flows/); test ids are `<UpstreamTest>/<flow>`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nftproxy.explain import explain
from nftproxy.ruleset.desired import Ruleset
from tests.support.builders import build
from tests.support.packet_flows import Flow, Table, outcome_of, tables

TABLES = tables()
FLOWS = [(table, flow) for table in TABLES for flow in table.flows]


@pytest.fixture(scope="module")
def rulesets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ruleset]:
    """Each table compiled once, from its objects as the manifest reader reads them."""
    out = {}
    for table in TABLES:
        directory: Path = tmp_path_factory.mktemp("objects")
        services, slices = table.load(directory)
        out[table.id] = build(services, slices, node=table.node)
    return out


@pytest.mark.parametrize(("table", "flow"), FLOWS, ids=[flow.id for _, flow in FLOWS])
def test_packet_goes_where_kube_proxy_sends_it(
    rulesets: dict[str, Ruleset], table: Table, flow: Flow
) -> None:
    result = explain(rulesets[table.id], table.node, flow.packet(table.node))
    assert outcome_of(result) == flow.expected, f"{flow.id}\n{result}"
    assert all(b.probability > 0 for b in result.branches)


def test_the_tables_hold_every_upstream_test_that_traces_packets() -> None:
    upstream = {table.id.split("/", 1)[0].split(" (", 1)[0] for table in TABLES}
    assert upstream == {
        "TestNoEndpointsReject",
        "TestClusterIPGeneral",
        "TestLoadBalancer",
        "TestNodePorts",
        "TestExternalTrafficPolicyLocal",
        "TestExternalTrafficPolicyCluster",
        "TestInternalTrafficPolicy",
        "TestTerminatingEndpointsTrafficPolicyLocal",
        "TestTerminatingEndpointsTrafficPolicyCluster",
        "TestInternalExternalMasquerade",
    }
    assert len(FLOWS) == 207
