"""Hypothesis strategies shared by property tests."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

# Prefixes start near a few bases, so random ones often nest, touch or repeat. The IPv6
# bases include the ranges nft spells with a dotted IPv4 tail (::ffff:0.0.0.0/96, ::1.2.3.4).
_BASES = {
    4: [int(ipaddress.IPv4Address(a)) for a in ("10.0.0.0", "192.0.2.0", "203.0.113.0")],
    6: [int(ipaddress.IPv6Address(a)) for a in ("fd00::", "2001:db8::", "::ffff:0:0", "::")],
}
_LENGTHS = {
    4: [0, 8, 16, 22, 23, 24, 25, 30, 31, 32, 32],
    6: [0, 32, 64, 96, 120, 126, 127, 128, 128],
}


@st.composite
def cidrs(draw: st.DrawFn, family: int | None = None) -> str:
    """One CIDR (canonical text, host bits clear) of `family`, or of either."""
    fam = family or draw(st.sampled_from([4, 6]))
    address = draw(st.sampled_from(_BASES[fam])) + draw(st.integers(0, 1023))
    length = draw(st.sampled_from(_LENGTHS[fam]))
    return str(ipaddress.ip_network((address, length), strict=False))


def cidr_lists(*, max_size: int = 5) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(cidrs(), max_size=max_size).map(tuple)
