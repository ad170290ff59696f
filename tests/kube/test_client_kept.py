"""Client connections kept between requests (keep_alive), against the real kube-apiserver."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from nftproxy.kube.client import Client, ClusterConfig, Forbidden
from tests.support.control_plane import start_control_plane


class Counting(Client):
    """A real client that counts the connections it opens."""

    opened = 0

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        self.opened += 1
        return super()._connect(timeout)


def test_kept_connections_are_reused_and_a_closed_one_replaced(tmp_path: Path) -> None:
    with start_control_plane(tmp_path / "cp") as cp:
        config = ClusterConfig(server=cp.url, token=cp.admin_token, insecure=True)
        client = Counting(config, timeout=10, keep_alive=2)
        for _ in range(20):
            assert json.loads(client.get("/api/v1/namespaces"))["kind"] == "NamespaceList"
        assert client.opened == 1  # one after the other: one connection
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "list", "resource": "pods"}},
        }
        assert json.loads(
            client.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        )
        assert client.opened == 1
        # An error answer leaves the connection fit for the next request.
        stranger = Counting(
            ClusterConfig(server=cp.url, token=cp.user_token, insecure=True), keep_alive=1
        )
        for _ in range(3):
            with pytest.raises(Forbidden):
                stranger.get("/api/v1/secrets")
        assert stranger.opened == 1
        # The server goes away and comes back: the kept connection is dead, the next
        # request opens a new one instead of failing.
        cp.restart_apiserver()
        assert json.loads(client.get("/api/v1/namespaces"))["kind"] == "NamespaceList"
        assert client.opened == 2
        client.close()
        stranger.close()
