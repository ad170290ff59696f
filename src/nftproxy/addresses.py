"""Addresses as Kubernetes reads them: `ipaddress`, plus the legacy spellings with leading
zeros that it still accepts (see `without_leading_zeros`). The result is the standard form,
which is all the rest of nftproxy ever sees."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["ip_address", "ip_network", "without_leading_zeros"]

_DECIMAL = re.compile(r"[0-9]+")  # ASCII digits only, as Go's parser (str.isdigit is wider)
_HEX = re.compile(r"[0-9A-Fa-f]+")


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`ipaddress.ip_address`, also accepting leading zeros; raises ValueError."""
    return ipaddress.ip_address(without_leading_zeros(text))


def ip_network(text: str, *, strict: bool = True) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`ipaddress.ip_network`, also accepting leading zeros in the address (the prefix length
    accepts them already); raises ValueError."""
    address, slash, length = text.partition("/")
    return ipaddress.ip_network(without_leading_zeros(address) + slash + length, strict=strict)


def without_leading_zeros(text: str) -> str:
    """`text` in the standard spelling when it is a legacy one that differs only by leading
    zeros; otherwise `text` unchanged, for `ipaddress` to accept or reject.

    Kubernetes parses Service and EndpointSlice addresses and kube-proxy's flags with
    k8s.io/utils/net's ParseIPSloppy and ParseCIDRSloppy: Go's parser from before Go 1.17,
    kept because API servers have stored such values. An IPv4 part is decimal whatever its
    zeros (`010` is ten, never octal as inet_aton would read it), and an IPv6 group may be
    longer than four digits when the extra ones are zeros. Nothing else is relaxed.
    """
    if ":" not in text:
        return _ipv4(text)
    groups = text.split(":")
    for i, group in enumerate(groups):
        if i == len(groups) - 1 and "." in group:
            groups[i] = _ipv4(group)  # the dotted IPv4 tail of an IPv6 address
        elif len(group) > 4 and _HEX.fullmatch(group):
            groups[i] = group.lstrip("0") or "0"
    return ":".join(groups)


def _ipv4(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(_DECIMAL.fullmatch(p) for p in parts):
        return text
    return ".".join(p.lstrip("0") or "0" for p in parts)
