"""Users of a test control plane (see nftproxy.lab.users, shared with the dashboard's demo)."""

from __future__ import annotations

from nftproxy.lab.users import EVERYTHING, VIEW, grant, namespace, ok, user

__all__ = ["EVERYTHING", "VIEW", "grant", "namespace", "ok", "user"]
