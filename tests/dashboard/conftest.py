"""The helm binary the dashboard's tests run and the OCI registry they push charts to:
hack/dashboard/build.sh builds both. Without them these tests skip and say which is
missing, except under CI=true, where they fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.dashboard.helm import ApiServer, Helm, HelmMissing, find_helm
from nftproxy.lab.apiserver import ControlPlane
from tests.dashboard.oci_registry import OciRegistry, RegistryMissing, find_registry
from tests.support.control_plane import start_control_plane


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    try:
        return find_helm()
    except HelmMissing as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real kube-apiserver and etcd, one per test module."""
    with start_control_plane(tmp_path_factory.mktemp("cp")) as plane:
        yield plane


@pytest.fixture(scope="module")
def packager(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm for packaging and indexing charts, which needs no cluster."""
    return Helm(helm_binary, ApiServer("https://127.0.0.1:1"), tmp_path_factory.mktemp("homes"))


@pytest.fixture(scope="module")
def registry_binary() -> Path:
    try:
        return find_registry()
    except RegistryMissing as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def oci_registry(
    registry_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OciRegistry]:
    """go-containerregistry's registry on loopback, one per test module, stopped by PID."""
    with OciRegistry(registry_binary, tmp_path_factory.mktemp("registry") / "log") as served:
        yield served
