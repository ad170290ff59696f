"""Which of the node's addresses accept NodePorts: kube-proxy's nodeport-ips, from
--nodeport-addresses and the node's own addresses."""

from __future__ import annotations

import dataclasses

import pytest

from nftproxy.config import ConfigError, node_config


def node(*cidrs: str, ips: tuple[str, ...] = ("192.168.0.1", "fd00:192::1")):
    return node_config(node_name="node-a", node_ips=ips, nodeport_addresses=cidrs)


def test_without_nodeport_addresses_every_local_address_accepts_node_ports():
    n = node()
    assert n.nodeport_match_all(4) and n.nodeport_match_all(6)
    assert n.nodeport_ips_of(4) == () and n.nodeport_warnings() == []


def test_a_family_without_a_cidr_or_with_one_holding_all_matches_every_local_address():
    n = node("192.168.0.0/24")
    assert not n.nodeport_match_all(4) and n.nodeport_match_all(6)
    assert n.nodeport_ips_of(4) == ("192.168.0.1",)
    assert node("192.168.0.0/24", "0.0.0.0/0").nodeport_match_all(4)


def test_the_nodes_own_addresses_in_the_cidrs_are_selected_never_loopback():
    n = node("0.0.0.0/1", "fd00::/8", ips=("10.0.0.7", "127.0.0.1", "172.16.0.1", "fd00:192::1"))
    assert n.nodeport_ips_of(4) == ("10.0.0.7",)
    assert n.nodeport_ips_of(6) == ("fd00:192::1",)


def test_the_interface_addresses_the_daemon_read_replace_the_node_ips():
    n = dataclasses.replace(node("192.168.0.0/16"), interface_ips=("192.168.7.7", "10.0.0.1"))
    assert n.nodeport_ips_of(4) == ("192.168.7.7",)


def test_primary_is_the_first_node_ip_of_each_family_and_matches_all_without_one():
    n = node("primary", ips=("192.168.0.1", "192.168.0.2"))
    assert n.nodeport_ips_of(4) == ("192.168.0.1",)
    assert n.nodeport_match_all(6)  # no IPv6 node IP: every local address, as kube-proxy
    assert node("primary", ips=("127.0.0.1",)).nodeport_match_all(4)


def test_primary_alone_or_not_at_all():
    with pytest.raises(ConfigError, match="nodeport-addresses: 'primary' cannot be combined"):
        node("primary", "10.0.0.0/8")


def test_no_node_address_in_the_cidrs_is_a_warning_naming_the_options():
    (warning,) = node("172.16.0.0/24").nodeport_warnings()
    assert "--nodeport-addresses 172.16.0.0/24" in warning
    assert "--node-ip 192.168.0.1" in warning and "no NodePort is served over IPv4" in warning
    daemon = dataclasses.replace(node("172.16.0.0/24"), interface_ips=("10.0.0.1",))
    (warning,) = daemon.nodeport_warnings()
    assert "its addresses 10.0.0.1" in warning and "--node-ip" not in warning
