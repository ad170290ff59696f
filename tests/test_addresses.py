"""Addresses with leading zeros, read as Kubernetes reads them (k8s.io/utils/net's
ParseIPSloppy and ParseCIDRSloppy), and the options that take addresses."""

from __future__ import annotations

import pytest

from nftproxy import addresses
from nftproxy.config import ConfigError, node_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.180.00.001", "10.180.0.1"),
        ("010.1.1.1", "10.1.1.1"),  # decimal: inet_aton would read octal 8.1.1.1
        ("192.168.000.255", "192.168.0.255"),
        ("00000000010.0.0.0000", "10.0.0.0"),  # any number of zeros
        ("fd00:00001::1", "fd00:1::1"),  # an IPv6 group longer than four digits
        ("::ffff:0:010.1.1.1", "::ffff:0:a01:101"),  # a dotted IPv4 tail
        ("10.1.2.3", "10.1.2.3"),
        ("fd00::1", "fd00::1"),
    ],
)
def test_leading_zeros_are_dropped_and_parts_read_as_decimal(text: str, expected: str) -> None:
    assert str(addresses.ip_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["1.2.3.0256", "1.2.3", "1.2.3.4.5", "1.2.3.٣", " 1.2.3.4", "0x1.2.3.4", "fd00::10000", ""],
)
def test_nothing_but_leading_zeros_is_relaxed(text: str) -> None:
    with pytest.raises(ValueError):
        addresses.ip_address(text)


def test_networks_accept_leading_zeros_in_the_address_and_the_length() -> None:
    assert str(addresses.ip_network("010.244.000.000/016")) == "10.244.0.0/16"
    assert str(addresses.ip_network("10.244.1.07/16", strict=False)) == "10.244.0.0/16"
    assert str(addresses.ip_network("fd00:0000010::/064")) == "fd00:10::/64"
    with pytest.raises(ValueError):
        addresses.ip_network("10.244.1.07/16")  # host bits set, as without the zeros


def test_node_options_accept_leading_zeros_and_keep_the_standard_form() -> None:
    node = node_config(
        node_ips=["192.168.000.001", "fd00::0001"],
        cluster_cidrs=["010.244.0.0/16"],
        nodeport_addresses=["192.168.000.000/24"],
    )
    assert node.node_ips == ("192.168.0.1", "fd00::1")
    assert node.cluster_cidrs == ("10.244.0.0/16",)
    assert node.nodeport_addresses == ("192.168.0.0/24",)
    with pytest.raises(ConfigError, match=r"node-ip: '1\.2\.3\.256'"):
        node_config(node_ips=["1.2.3.256"])
