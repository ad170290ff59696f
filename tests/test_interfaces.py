"""Reading and following the addresses of a network namespace's interfaces (rtnetlink),
in namespaces the tests create."""

from __future__ import annotations

import pytest

from nftproxy.interfaces import InterfaceAddresses
from tests.support.kernel import ip

pytestmark = pytest.mark.kernel


def test_every_address_of_the_namespace_is_read_this_end_of_a_point_to_point_link(netns):
    ip("-n", netns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ip("-n", netns, "link", "set", "d0", "up")
    ip("-n", netns, "addr", "add", "10.1.2.3/24", "dev", "d0")
    ip("-n", netns, "addr", "add", "10.9.9.1", "peer", "10.9.9.2", "dev", "d0")
    ip("-n", netns, "-6", "addr", "add", "fd00:1::5/64", "dev", "d0", "nodad")
    addresses = InterfaceAddresses(netns)
    try:
        got = set(addresses.read())
    finally:
        addresses.close()
    assert {"127.0.0.1", "::1", "10.1.2.3", "10.9.9.1", "fd00:1::5"} <= got
    assert "10.9.9.2" not in got  # the peer's


def test_an_address_added_or_removed_is_notified(netns):
    ip("-n", netns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    addresses = InterfaceAddresses(netns)
    try:
        assert "10.1.2.3" not in addresses.read()
        ip("-n", netns, "addr", "add", "10.1.2.3/24", "dev", "d0")
        assert addresses.wait(10.0)
        assert "10.1.2.3" in addresses.read()
        ip("-n", netns, "addr", "del", "10.1.2.3/24", "dev", "d0")
        assert addresses.wait(10.0)
        assert "10.1.2.3" not in addresses.read()
    finally:
        addresses.close()


def test_a_missing_namespace_is_an_os_error():
    with pytest.raises(FileNotFoundError):
        InterfaceAddresses("nftproxy-test-no-such-namespace")
