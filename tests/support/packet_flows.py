"""kube-proxy's packet-flow tables (tests/data/packet_flows/, described in its README), read
into tables for the evaluator and the end-to-end tests.

A table is what one upstream subtest checks at one moment: the objects, this node's settings
and the flows. Objects go through `nftproxy.sources.manifests`, as any manifest directory
does, so the tables also prove that reader on kubectl-shaped input.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from nftproxy.config import NodeConfig, node_config
from nftproxy.explain import Explanation, Packet
from nftproxy.model import EndpointSlice, Service
from nftproxy.sources import manifests

DATA = Path(__file__).parents[1] / "data" / "packet_flows"

# The node of upstream's NewFakeProxier, which every table starts from: its name, its
# addresses (192.168.99.11, an external IP in some tests, is one of them), the pod CIDR that
# tells pod traffic apart, the Service CIDRs and --nodeport-addresses.
BASE_NODE: Mapping[str, Any] = {
    "node_name": "test-node",
    "node_ips": ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"],
    "cluster_cidrs": ["10.0.0.0/8", "fd00:10::/64"],
    "service_cidrs": ["172.30.0.0/16", "fd00:10:96::/112"],
    "nodeport_addresses": ["192.168.0.2/32", "2001:db8::1/128"],
    "masquerade_all": False,
}

REJECT, DROP = "REJECT", "DROP"
# Our evaluator can also find a packet partly DNATed, partly left alone (a missing bucket):
# upstream has no word for that, so it gets one that never matches an expectation.
UNCHANGED = "UNCHANGED"


class Outcome(NamedTuple):
    """Upstream's verdict on one packet: where it goes ("ip:port, ip:port" sorted, REJECT,
    DROP, or "" when the proxy leaves it alone) and whether it is masqueraded."""

    output: str
    masq: bool


@dataclass(frozen=True, slots=True)
class Flow:
    id: str  # "<UpstreamTest>[/<subtest>]/<flow name>"
    name: str
    source: str
    dest: str
    port: int
    proto: str
    output: str
    masq: bool

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.dest).version

    @property
    def expected(self) -> Outcome:
        return Outcome(join(self.output.split(", ") if self.output else ()), self.masq)

    def packet(self, node: NodeConfig) -> Packet:
        # As upstream's tracer: a packet from one of the node's own addresses is the node's.
        return Packet(
            self.source, self.dest, self.port, self.proto, from_node=self.source in node.node_ips
        )

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The "ip:port" endpoints the flow expects (none for REJECT, DROP or "")."""
        return tuple(t for t in self.expected.output.split(", ") if t and t not in (REJECT, DROP))


@dataclass(frozen=True, slots=True)
class Table:
    id: str  # the upstream test and subtest, and "(EndpointSlices deleted)" for that step
    node: NodeConfig
    objects: tuple[Mapping[str, Any], ...]
    flows: tuple[Flow, ...]

    def load(self, directory: Path) -> tuple[list[Service], list[EndpointSlice]]:
        """The Services and EndpointSlices, read by the manifest reader from a kubectl-style
        List written into `directory`."""
        path = directory / "objects.yaml"
        path.write_text(
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": list(self.objects)})
        )
        read = manifests.load_paths([path])
        if read.errors or read.skipped or read.ignored:
            problems = [str(e) for e in read.errors] + [r for _, r in read.skipped]
            raise AssertionError(f"{self.id}: objects not all read: {problems} {read.ignored}")
        return list(read.services.values()), list(read.slices.values())


def join(tokens: Iterable[str]) -> str:
    return ", ".join(sorted(tokens))


def endpoint_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def outcome_of(result: Explanation) -> Outcome:
    """The evaluator's answer in upstream's terms. Masquerade is "all DNATed branches are
    masqueraded"; a mix, or a mix of verdicts, shows as a token upstream never writes."""
    tokens: set[str] = set()
    masq: set[bool] = set()
    verdicts = {b.verdict for b in result.branches}
    for b in result.branches:
        if b.verdict == "dnat" and b.backend is not None:
            tokens.add(endpoint_text(b.backend.ip, b.backend.port))
            masq.add(b.masquerade)
        elif b.verdict == "reject":
            tokens.add(REJECT)
        elif b.verdict == "drop":
            tokens.add(DROP)
        elif verdicts != {"accept"}:
            tokens.add(UNCHANGED)
    if len(masq) > 1:
        tokens.add("MASQUERADED ONLY SOMETIMES")
    return Outcome(join(tokens), masq == {True})


def _flow(prefix: str, raw: Mapping[str, Any]) -> Flow:
    target = str(raw["to"])
    host, _, port = target.rpartition(":")
    return Flow(
        id=f"{prefix}/{raw['name']}",
        name=str(raw["name"]),
        source=str(ipaddress.ip_address(str(raw["from"]))),
        dest=str(ipaddress.ip_address(host.strip("[]"))),
        port=int(port),
        proto=str(raw.get("proto", "tcp")),
        output=str(raw["output"]),
        masq=bool(raw.get("masq", False)),
    )


def _overridden(flow: Mapping[str, Any], overrides: Mapping[str, Any]) -> Mapping[str, Any]:
    change = overrides.get(flow["name"], {})
    return {**flow, **change}


def _unique(flows: list[Flow]) -> tuple[Flow, ...]:
    """Upstream names two flows of TestClusterIPGeneral alike; ids must differ."""
    seen: dict[str, int] = {}
    out = []
    for f in flows:
        n = seen[f.id] = seen.get(f.id, 0) + 1
        out.append(f if n == 1 else replace(f, id=f"{f.id} #{n}"))
    return tuple(out)


def tables_of(path: Path) -> list[Table]:
    doc = yaml.safe_load(path.read_text())
    test = str(doc["test"])
    shared_objects = list(doc.get("objects") or ())
    shared_flows = list(doc.get("flows") or ())
    deleted_flows = list(doc.get("after_deleting_endpointslices") or ())
    out: list[Table] = []
    for case in doc.get("cases") or [{}]:
        prefix = f"{test}/{case['name']}" if case.get("name") else test
        node = node_config(**{**BASE_NODE, **doc.get("node", {}), **case.get("node", {})})
        objects = (*shared_objects, *(case.get("objects") or ()))
        overrides = case.get("overrides") or {}
        unknown = set(overrides) - {f["name"] for f in shared_flows}
        assert not unknown, f"{prefix}: overrides name no flow: {unknown}"
        raw_flows = [_overridden(f, overrides) for f in shared_flows] + list(
            case.get("flows") or ()
        )
        out.append(Table(prefix, node, objects, _unique([_flow(prefix, f) for f in raw_flows])))
        if deleted_flows:
            kept = tuple(o for o in objects if o["kind"] != "EndpointSlice")
            flows = _unique([_flow(prefix, f) for f in deleted_flows])
            out.append(Table(f"{prefix} (EndpointSlices deleted)", node, kept, flows))
    return out


def tables() -> list[Table]:
    return [t for path in sorted(DATA.glob("Test*.yaml")) for t in tables_of(path)]
