"""Compiling Services into rulesets (nftproxy.ruleset.compile): what the skeleton's and the
Services' sets render to, pinned."""

from __future__ import annotations

import pytest

from nftproxy.config import NodeConfig
from nftproxy.ruleset.compile import Names, skeleton_sets
from tests.support.builders import NODE, build, endpoints, ep, service

# SetDef.spec() of every skeleton set, `<name> <spec>`, exactly as nftproxy rendered them
# before set fields were typed (f471c58, the parent of the typed-fields change). The
# skeleton's marker chain is named by a fingerprint of these texts (skeleton_chains), so
# another rendering, however equivalent to nft, makes every node rebuild its table as a
# new generation on upgrade.
SKELETON_SPECS = """\
g1-frontends4 type ipv4_addr . inet_proto . inet_service : verdict
g1-short-circuit4 type ipv4_addr . inet_proto . inet_service : verdict
g1-nodeports4 type inet_proto . inet_service : verdict
g1-np-short-circuit4 type inet_proto . inet_service : verdict
g1-endpoints4-tcp typeof ip daddr . tcp dport . numgen random mod 2 : ip daddr . tcp dport
g1-np-endpoints4-tcp typeof tcp dport . numgen random mod 2 : ip daddr . tcp dport
g1-endpoints-local4-tcp typeof ip daddr . tcp dport . numgen random mod 2 : ip daddr . tcp dport
g1-np-endpoints-local4-tcp typeof tcp dport . numgen random mod 2 : ip daddr . tcp dport
g1-endpoints4-udp typeof ip daddr . udp dport . numgen random mod 2 : ip daddr . udp dport
g1-np-endpoints4-udp typeof udp dport . numgen random mod 2 : ip daddr . udp dport
g1-endpoints-local4-udp typeof ip daddr . udp dport . numgen random mod 2 : ip daddr . udp dport
g1-np-endpoints-local4-udp typeof udp dport . numgen random mod 2 : ip daddr . udp dport
g1-endpoints4-sctp typeof ip daddr . sctp dport . numgen random mod 2 : ip daddr . sctp dport
g1-np-endpoints4-sctp typeof sctp dport . numgen random mod 2 : ip daddr . sctp dport
g1-endpoints-local4-sctp typeof ip daddr . sctp dport . numgen random mod 2 : ip daddr . sctp dport
g1-np-endpoints-local4-sctp typeof sctp dport . numgen random mod 2 : ip daddr . sctp dport
g1-masq-frontends4 type ipv4_addr . inet_proto . inet_service
g1-masq-nodeports4 type inet_proto . inet_service
g1-cluster-frontends4 type ipv4_addr . inet_proto . inet_service
g1-firewall4 type ipv4_addr . inet_proto . inet_service
g1-firewall-allow4 type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval
g1-hairpin4 type ipv4_addr . ipv4_addr
g1-cluster-ips4 type ipv4_addr
g1-service-cidrs4 type ipv4_addr; flags interval
g1-frontends6 type ipv6_addr . inet_proto . inet_service : verdict
g1-short-circuit6 type ipv6_addr . inet_proto . inet_service : verdict
g1-nodeports6 type inet_proto . inet_service : verdict
g1-np-short-circuit6 type inet_proto . inet_service : verdict
g1-endpoints6-tcp typeof ip6 daddr . tcp dport . numgen random mod 2 : ip6 daddr . tcp dport
g1-np-endpoints6-tcp typeof tcp dport . numgen random mod 2 : ip6 daddr . tcp dport
g1-endpoints-local6-tcp typeof ip6 daddr . tcp dport . numgen random mod 2 : ip6 daddr . tcp dport
g1-np-endpoints-local6-tcp typeof tcp dport . numgen random mod 2 : ip6 daddr . tcp dport
g1-endpoints6-udp typeof ip6 daddr . udp dport . numgen random mod 2 : ip6 daddr . udp dport
g1-np-endpoints6-udp typeof udp dport . numgen random mod 2 : ip6 daddr . udp dport
g1-endpoints-local6-udp typeof ip6 daddr . udp dport . numgen random mod 2 : ip6 daddr . udp dport
g1-np-endpoints-local6-udp typeof udp dport . numgen random mod 2 : ip6 daddr . udp dport
g1-endpoints6-sctp typeof ip6 daddr . sctp dport . numgen random mod 2 : ip6 daddr . sctp dport
g1-np-endpoints6-sctp typeof sctp dport . numgen random mod 2 : ip6 daddr . sctp dport
g1-endpoints-local6-sctp typeof ip6 daddr . sctp dport . numgen random mod 2 : ip6 daddr . sctp dport
g1-np-endpoints-local6-sctp typeof sctp dport . numgen random mod 2 : ip6 daddr . sctp dport
g1-masq-frontends6 type ipv6_addr . inet_proto . inet_service
g1-masq-nodeports6 type inet_proto . inet_service
g1-cluster-frontends6 type ipv6_addr . inet_proto . inet_service
g1-firewall6 type ipv6_addr . inet_proto . inet_service
g1-firewall-allow6 type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval
g1-hairpin6 type ipv6_addr . ipv6_addr
g1-cluster-ips6 type ipv6_addr
g1-service-cidrs6 type ipv6_addr; flags interval
g1-record type inet_service : ipv6_addr . ipv4_addr; comment "nftproxy: digest of the desired state . generation id after writing it"
"""
# With cluster CIDRs, and with nodeport addresses that do not match every local address.
OPTIONAL_SPECS = """\
g1-cluster-cidrs4 type ipv4_addr; flags interval
g1-nodeport-ips4 type ipv4_addr
g1-cluster-cidrs6 type ipv6_addr; flags interval
g1-nodeport-ips6 type ipv6_addr
"""
# The per-endpoint client sets of ClientIP session affinity (timeout 300 s).
AFFINITY_SPECS = [
    "type ipv4_addr; flags dynamic,timeout; timeout 300s",
    "type ipv4_addr; flags dynamic,timeout; timeout 300s",
    "type ipv6_addr; flags dynamic,timeout; timeout 300s",
]


def specs(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines())


@pytest.mark.parametrize(
    ("node", "optional"),
    [
        (NodeConfig(), ()),
        (
            NodeConfig(
                node_ips=("192.168.1.10", "fd00:1::10"),
                cluster_cidrs=("10.244.0.0/16", "fd00:244::/64"),
                nodeport_addresses=("192.168.1.0/24", "fd00:1::/64"),
            ),
            ("g1-cluster-cidrs4", "g1-nodeport-ips4", "g1-cluster-cidrs6", "g1-nodeport-ips6"),
        ),
        (
            NodeConfig(
                node_ips=("192.168.1.10", "fd00:1::10"),
                cluster_cidrs=("10.244.0.0/16",),
                nodeport_addresses=("primary",),
            ),
            ("g1-cluster-cidrs4", "g1-nodeport-ips4", "g1-nodeport-ips6"),
        ),
    ],
    ids=["bare", "cluster-cidrs-and-nodeport-addresses", "ipv4-cluster-cidr-primary"],
)
def test_skeleton_sets_render_the_nft_text_they_always_did(
    node: NodeConfig, optional: tuple[str, ...]
) -> None:
    expected = specs(SKELETON_SPECS) | {n: specs(OPTIONAL_SPECS)[n] for n in optional}
    got = {name: sdef.spec() for name, sdef in skeleton_sets(Names(), node).items()}
    assert got == expected


def test_affinity_sets_render_the_nft_text_they_always_did() -> None:
    sticky = service("sticky", cluster_ips=("10.96.0.77", "fd00:96::77"), affinity_timeout=300)
    slices = [
        endpoints("sticky", [ep("10.244.0.7"), ep("10.244.1.7", "node-b")]),
        endpoints("sticky", [ep("fd00:244::7")], family=6),
    ]
    ruleset = build([sticky], slices, names=Names())
    skeleton = skeleton_sets(Names(), NODE)
    got = sorted(s.spec() for name, s in ruleset.sets.items() if name not in skeleton)
    assert got == AFFINITY_SPECS
