"""The ruleset's schema (nftproxy.ruleset.schema): CIDRs in the one form the kernel stores
and nft 1.0.6 lists for an interval set. (What the sets render to is pinned in
test_compile.py.)"""

from __future__ import annotations

import pytest

from nftproxy.ruleset.schema import interval_atoms


@pytest.mark.parametrize(
    ("cidrs", "listed"),
    [
        (["192.168.0.2/32"], ["192.168.0.2"]),  # a host: the bare address
        (["2001:db8::1/128"], ["2001:db8::1"]),
        (["10.0.0.0/24"], ["10.0.0.0/24"]),
        (["0.0.0.0/0"], ["0.0.0.0/0"]),
        (["::/0"], ["::/0"]),
        (["10.0.0.0/8", "10.1.0.0/16"], ["10.0.0.0/8"]),  # nested: the kernel refuses both
        (["10.0.0.0/8", "10.0.0.0/8"], ["10.0.0.0/8"]),
        (["10.0.0.0/24", "10.0.1.0/24"], ["10.0.0.0/23"]),  # adjacent, making a prefix
        (["10.0.0.0/24", "10.0.1.0/25"], ["10.0.0.0/24", "10.0.1.0/25"]),  # kept apart
        (["10.0.0.2/32", "10.0.0.3/32"], ["10.0.0.2/31"]),
        (["10.0.0.1/32", "10.0.0.2/32"], ["10.0.0.1", "10.0.0.2"]),
        (["192.168.0.2/32", "192.168.0.0/23"], ["192.168.0.0/23"]),
        (["0.0.0.0/0", "203.0.113.7/32", "::/0"], ["0.0.0.0/0", "::/0"]),
        (["fd00::/64", "fd00:0:0:1::/64"], ["fd00::/63"]),
        # nft spells addresses with inet_ntop: an embedded IPv4 address stays dotted.
        (["::ffff:0:0/96"], ["::ffff:0.0.0.0/96"]),
        (["::102:304/128"], ["::1.2.3.4"]),
        (["2001:db8::/32", "10.0.0.0/8"], ["10.0.0.0/8", "2001:db8::/32"]),
    ],
)
def test_cidrs_take_the_form_nft_lists_for_an_interval_set(cidrs, listed):
    assert interval_atoms(cidrs) == tuple(listed)
