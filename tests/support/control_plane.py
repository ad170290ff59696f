"""The real control plane (nftproxy.lab.apiserver) as the tests start it: a test skips,
naming what to build, when kube-apiserver or etcd is not built; under CI=true it fails."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from nftproxy.lab import apiserver
from nftproxy.lab.apiserver import BinariesMissing, ControlPlane


def start_control_plane(
    tmpdir: Path | str,
    *,
    timeout: float = 60.0,
    watch_cache: bool = True,
    extra_apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    """nftproxy.lab.apiserver.start_control_plane, or a skip when its binaries are missing."""
    try:
        return apiserver.start_control_plane(
            tmpdir,
            timeout=timeout,
            watch_cache=watch_cache,
            extra_apiserver_args=extra_apiserver_args,
        )
    except BinariesMissing as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
