"""Who a signed-in user is and where they may act, asked of the API server with the user's
own token: a SelfSubjectReview names them (and refuses a bad token), SelfSubjectAccessReviews
say in which namespaces they may see and deploy releases."""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nftproxy.dashboard.helm import ApiServer, Credentials
from nftproxy.kube.client import ApiError, Client

__all__ = ["BadToken", "NamespaceAccess", "UserAccess"]

_REVIEWS = 8  # access reviews in flight at once
_REFUSED = "the cluster does not accept this token (expired or revoked?)"


class BadToken(Exception):
    """The API server does not accept the token: expired, revoked or mistyped."""


@dataclass(frozen=True, slots=True)
class NamespaceAccess:
    """What a user may do with Helm releases in one namespace. Helm keeps a release as
    Secrets in its namespace: seeing releases takes listing them, deploying creating them."""

    name: str
    view: bool
    deploy: bool


class UserAccess:
    """One user's view of the cluster, every request made with their token."""

    def __init__(
        self,
        server: ApiServer,
        user: Credentials,
        *,
        timeout: float = 10.0,
        client: Client | None = None,
    ) -> None:
        """`client`, if given, is one made with the user's token (its connections kept)."""
        if client is None:
            client = Client(server.config(user), timeout=timeout)
        self._client = client

    def username(self) -> str:
        """The user's name as the API server authenticates them; BadToken if it does not."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = self._client.post("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        except ApiError as exc:
            if exc.status == 401:
                raise BadToken(_REFUSED) from None
            raise
        name = json.loads(answer).get("status", {}).get("userInfo", {}).get("username")
        return str(name) if name else "?"

    def can(self, verb: str, resource: str, namespace: str, group: str = "") -> bool:
        """Whether the user may `verb` `resource` in `namespace` (a SelfSubjectAccessReview)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                }
            },
        }
        try:
            path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            answer = self._client.post(path, review)
        except ApiError as exc:
            if exc.status == 401:
                raise BadToken(_REFUSED) from None
            raise
        return bool(json.loads(answer).get("status", {}).get("allowed"))

    def allowed(self, verb: str, resource: str, candidates: Iterable[str]) -> set[str]:
        """The candidate namespaces where the user may `verb` `resource`."""
        names = sorted(set(candidates))
        with ThreadPoolExecutor(max_workers=_REVIEWS, thread_name_prefix="review") as pool:
            answers = list(pool.map(lambda ns: self.can(verb, resource, ns), names))
        return {ns for ns, yes in zip(names, answers, strict=True) if yes}

    def namespaces(self, candidates: Iterable[str]) -> list[NamespaceAccess]:
        """The candidates the user may see or deploy releases in, sorted by name."""
        names = sorted(set(candidates))

        def access(name: str) -> NamespaceAccess:
            return NamespaceAccess(
                name,
                view=self.can("list", "secrets", name),
                deploy=self.can("create", "secrets", name),
            )

        with ThreadPoolExecutor(max_workers=_REVIEWS, thread_name_prefix="review") as pool:
            found = list(pool.map(access, names))
        return [a for a in found if a.view or a.deploy]
