"""Users of a test control plane: namespaces, and service accounts with a Role there and a
token, so that the API server's RBAC decides what each may do."""

from __future__ import annotations

import uuid
from typing import Any

from nftproxy.dashboard.helm import Credentials
from nftproxy.lab.apiserver import ControlPlane


def ok(cp: ControlPlane, method: str, path: str, body: Any = None, want: int = 201) -> Any:
    status, got = cp.request(method, path, body)
    assert status == want, f"{method} {path}: {status} {got}"
    return got


def namespace(cp: ControlPlane) -> str:
    name = f"apps-{uuid.uuid4().hex[:8]}"
    ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def user(cp: ControlPlane, ns: str, name: str, rules: list[dict[str, Any]]) -> Credentials:
    """A service account in `ns` with a Role of `rules` there, and a token for it."""
    ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    ok(cp, "POST", f"{rbac}/roles", {"metadata": {"name": name}, "rules": rules})
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }
    ok(cp, "POST", f"{rbac}/rolebindings", binding)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    got = ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", request)
    return Credentials(got["status"]["token"])


def grant(cp: ControlPlane, ns: str, account: str, rules: list[dict[str, Any]]) -> None:
    """Give the service account `account` ("namespace:name") a Role of `rules` in `ns`."""
    account_ns, _, name = account.partition(":")
    role = f"{name}-from-{account_ns}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    ok(cp, "POST", f"{rbac}/roles", {"metadata": {"name": role}, "rules": rules})
    binding = {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": account_ns}],
    }
    ok(cp, "POST", f"{rbac}/rolebindings", binding)


EVERYTHING = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
VIEW = [{"apiGroups": ["", "apps"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]
