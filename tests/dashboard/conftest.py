"""The dashboard's tests share: the helm binary and the OCI registry they push charts to
(hack/dashboard/build.sh builds both; without them these tests skip and say which is
missing, except under CI=true, where they fail), a real control plane, a chart repository
on loopback with the test charts, and two users."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.dashboard.helm import ApiServer, Helm, HelmMissing, find_helm
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo
from tests.dashboard.oci_registry import OciRegistry, RegistryMissing, find_registry
from tests.support.control_plane import start_control_plane
from tests.support.dashboard import publish_test_charts
from tests.support.users import EVERYTHING, VIEW, namespace, user


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


@pytest.fixture(scope="module")
def repo(packager: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpChartRepo]:
    """The test charts (tests.support.dashboard.publish_test_charts) on loopback."""
    with HttpChartRepo(packager, tmp_path_factory.mktemp("repo")) as served:
        publish_test_charts(served, tmp_path_factory.mktemp("charts"))
        yield served


@pytest.fixture(scope="module")
def world(cp: ControlPlane) -> dict[str, str]:
    """Two namespaces: alice deploys in hers; bob may only look at his."""
    mine, theirs = namespace(cp), namespace(cp)
    return {
        "mine": mine,
        "theirs": theirs,
        "alice": user(cp, mine, "alice", EVERYTHING).token,
        "bob": user(cp, theirs, "bob", VIEW).token,
    }
