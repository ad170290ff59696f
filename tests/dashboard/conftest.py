"""The helm binary the dashboard's tests run: hack/dashboard/build.sh builds it. Without it
these tests skip and say so, except under CI=true, where they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nftproxy.dashboard.helm import HelmMissing, find_helm


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    try:
        return find_helm()
    except HelmMissing as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
