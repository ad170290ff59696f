"""EndpointSlice keeps its endpoints as columns; what callers see must not change."""

from __future__ import annotations

import pickle

import pytest

from nftproxy.model import Endpoint, EndpointSlice, Protocol, SlicePort, V4Addresses

PORTS = (SlicePort("http", Protocol.TCP, 8080),)


def a_slice(*endpoints: Endpoint) -> EndpointSlice:
    return EndpointSlice("shop", "web-abc", "web", 4, PORTS, endpoints)


def test_endpoints_come_back_in_order_with_their_own_facts() -> None:
    eps = (
        Endpoint("10.0.0.1", node_name="a", zone="z1"),
        Endpoint("10.0.0.2", node_name="b", ready=False, serving=True, terminating=True),
        Endpoint("10.0.0.3", node_name="a", zone="z1", zone_hints=frozenset({"z1"})),
    )
    sl = a_slice(*eps)
    assert sl.endpoints == eps
    assert [e.ready for e in sl.endpoints] == [True, False, True]
    assert tuple(sl.addresses) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_shared_facts_are_stored_once_and_still_read_per_endpoint() -> None:
    same = a_slice(*(Endpoint(f"10.0.0.{i}", node_name="a") for i in range(5)))
    assert len(same.endpoints) == 5
    assert all(e.node_name == "a" for e in same.endpoints)
    assert list(same.columns()) == [(f"10.0.0.{i}", same.endpoints[0].facts) for i in range(5)]


def test_equal_content_is_equal_whatever_way_it_was_made() -> None:
    eps = [Endpoint("10.0.0.1", node_name="a"), Endpoint("10.0.0.2", node_name="a")]
    made = a_slice(*eps)
    columns = EndpointSlice.of_columns(
        "shop", "web-abc", "web", 4, PORTS, ("10.0.0.1", "10.0.0.2"), (eps[0].facts, eps[1].facts)
    )
    assert made == columns and hash(made) == hash(columns)
    assert made != a_slice(eps[0], Endpoint("10.0.0.2", node_name="b"))
    assert made != a_slice(eps[1], eps[0])  # order is part of a slice
    assert a_slice() == a_slice() and a_slice().endpoints == ()


def test_columns_of_different_lengths_are_refused() -> None:
    facts = Endpoint("10.0.0.1").facts
    with pytest.raises(ValueError, match="one facts entry per address"):
        EndpointSlice.of_columns("shop", "web", "web", 4, PORTS, ("10.0.0.1", "10.0.0.2"), (facts,))


def test_slices_and_endpoints_are_immutable_and_survive_pickling() -> None:
    sl = a_slice(Endpoint("10.0.0.1", node_name="a"), Endpoint("10.0.0.2", ready=False))
    with pytest.raises(AttributeError):
        sl.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sl.endpoints[0].ip = "10.0.0.9"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(sl)) == sl
    changed = sl.with_endpoints([sl.endpoints[0].with_ip("10.0.0.9")])
    assert [e.ip for e in changed.endpoints] == ["10.0.0.9"] and changed.name == sl.name


def test_packed_ipv4_addresses_read_like_a_tuple_of_texts() -> None:
    texts = ("10.0.0.1", "10.244.255.254", "192.168.7.9")
    packed = V4Addresses.pack(texts)
    assert len(packed) == 3 and bytes(packed) == b"\n\0\0\x01\n\xf4\xff\xfe\xc0\xa8\x07\x09"
    assert list(packed) == list(texts) and tuple(packed[1:]) == texts[1:]
    assert packed[0] == "10.0.0.1" and packed[-1] == "192.168.7.9"
    assert "10.244.255.254" in packed and "10.0.0.2" not in packed
    with pytest.raises(IndexError):
        packed[3]
    assert packed == V4Addresses.pack(list(texts)) and packed != V4Addresses.pack(texts[:2])
    assert pickle.loads(pickle.dumps(packed)) == packed
    assert "10.244.255.254" in repr(packed) and "10.244.255.254" in f"{packed}"
    assert packed != bytes(packed) and bytes(packed) != packed
    with pytest.raises(OSError):
        V4Addresses.pack(["fd00::1"])


def test_a_slice_packs_ipv4_addresses_and_keeps_ipv6_as_text() -> None:
    v4 = a_slice(Endpoint("10.0.0.1"), Endpoint("10.0.0.2"))
    assert isinstance(v4.addresses, V4Addresses)
    assert [e.ip for e in v4.endpoints] == ["10.0.0.1", "10.0.0.2"]
    v6 = EndpointSlice("shop", "web-v6", "web", 6, PORTS, [Endpoint("fd00::1")])
    assert v6.addresses == ("fd00::1",)
