"""Users of a control plane the project started (tests, the dashboard's demo): namespaces,
and service accounts with a Role and a token, so that the API server's RBAC decides what
each may do."""

from __future__ import annotations

import uuid
from typing import Any

from nftproxy.dashboard.helm import Credentials
from nftproxy.lab.apiserver import ControlPlane

__all__ = ["EVERYTHING", "VIEW", "grant", "namespace", "ok", "user"]

EVERYTHING = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
VIEW = [{"apiGroups": ["", "apps"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]


def ok(cp: ControlPlane, method: str, path: str, body: Any = None, want: int = 201) -> Any:
    status, got = cp.request(method, path, body)
    assert status == want, f"{method} {path}: {status} {got}"
    return got


def namespace(cp: ControlPlane, name: str | None = None) -> str:
    """A new namespace: `name`, or a unique one."""
    name = name or f"apps-{uuid.uuid4().hex[:8]}"
    ok(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def grant(
    cp: ControlPlane, ns: str, account: tuple[str, str], role: str, rules: list[dict[str, Any]]
) -> None:
    """A Role `role` of `rules` in `ns`, bound to the service account (namespace, name)."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    ok(cp, "POST", f"{rbac}/roles", {"metadata": {"name": role}, "rules": rules})
    binding = {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account[1], "namespace": account[0]}],
    }
    ok(cp, "POST", f"{rbac}/rolebindings", binding)


def user(
    cp: ControlPlane, ns: str, name: str, rules: list[dict[str, Any]], *, hours: int = 1
) -> Credentials:
    """A service account in `ns` with a Role of `rules` there, and a token for it valid
    `hours` hours."""
    ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})
    grant(cp, ns, (ns, name), name, rules)
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": hours * 3600},
    }
    got = ok(cp, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", request)
    return Credentials(got["status"]["token"])
