"""Who a user is and where they may act (nftproxy.dashboard.access), against the real
kube-apiserver: service-account users, their Roles, a bad token."""

from __future__ import annotations

import pytest

from nftproxy.dashboard.access import BadToken, NamespaceAccess, UserAccess
from nftproxy.dashboard.helm import ApiServer, Credentials
from nftproxy.lab.apiserver import ControlPlane
from tests.support.users import EVERYTHING, VIEW, namespace, user


def test_users_see_only_the_namespaces_their_roles_open_and_how_far(cp: ControlPlane) -> None:
    mine, theirs, closed = namespace(cp), namespace(cp), namespace(cp)
    alice = user(cp, mine, "alice", EVERYTHING)
    bob = user(cp, theirs, "bob", VIEW)
    server = ApiServer(cp.url, insecure=True)
    as_alice, as_bob = UserAccess(server, alice), UserAccess(server, bob)

    assert as_alice.username() == f"system:serviceaccount:{mine}:alice"
    assert as_alice.namespaces([mine, theirs, closed]) == [NamespaceAccess(mine, True, True)]
    assert as_bob.namespaces([mine, theirs, closed]) == [NamespaceAccess(theirs, True, False)]
    assert as_alice.can("create", "deployments", mine, group="apps")
    assert not as_bob.can("create", "deployments", theirs, group="apps")


def test_a_token_the_cluster_does_not_accept_is_named_as_such(cp: ControlPlane) -> None:
    access = UserAccess(ApiServer(cp.url, insecure=True), Credentials("expired-or-made-up"))
    with pytest.raises(BadToken, match="does not accept this token"):
        access.username()
    with pytest.raises(BadToken):
        access.namespaces(["default"])
