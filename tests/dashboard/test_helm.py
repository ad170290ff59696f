"""The dashboard's helm edge against the real parts: helm v4 built from the Go module proxy,
a real kube-apiserver, a chart repository on loopback, and users who are service accounts
with their own RBAC rights."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nftproxy.dashboard.helm import (
    ApiServer,
    Credentials,
    Helm,
    HelmError,
    check_namespace,
    check_release_name,
)
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo, write_chart
from tests.support.users import EVERYTHING, VIEW, namespace, user

BUILD = Path(__file__).resolve().parents[2] / "hack" / "dashboard" / "build.sh"
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-greeting
data:
  greeting: {{ .Values.greeting | quote }}
"""


def pinned_helm_version() -> str:
    found = re.search(r"^helm_version=(\S+)$", BUILD.read_text(), re.M)
    assert found, f"no helm_version= in {BUILD}"
    return found.group(1)


@pytest.fixture(scope="module")
def helm(helm_binary: Path, cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    server = ApiServer(cp.url, insecure=True)
    return Helm(helm_binary, server, tmp_path_factory.mktemp("helm-homes"))


@pytest.fixture(scope="module")
def repo(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpChartRepo]:
    sources = tmp_path_factory.mktemp("charts")
    charts = [
        write_chart(
            sources, "hello", v, values='greeting: "hello"\n', templates={"cm.yaml": CONFIGMAP}
        )
        for v in ("0.1.0", "0.2.0")
    ]
    with HttpChartRepo(helm, tmp_path_factory.mktemp("repo")) as served:
        served.publish(charts)
        yield served


def greeting(cp: ControlPlane, ns: str, release: str) -> str | None:
    status, got = cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{release}-greeting")
    return got["data"]["greeting"] if status == 200 else None


def test_helm_is_the_pinned_build(helm: Helm) -> None:
    assert helm.version() == pinned_helm_version()


def test_a_user_installs_upgrades_rolls_back_and_deletes_with_their_own_rights(
    cp: ControlPlane, helm: Helm, repo: HttpChartRepo
) -> None:
    ns = namespace(cp)
    alice = user(cp, ns, "alice", EVERYTHING)
    done = helm.install(
        alice, "web", "hello", ns, {"greeting": "hi"}, version="0.1.0", repo=repo.url
    )
    assert done["info"]["status"] == "deployed" and done["version"] == 1
    assert greeting(cp, ns, "web") == "hi"

    helm.upgrade(alice, "web", "hello", ns, {"greeting": "hey"}, version="0.2.0", repo=repo.url)
    assert greeting(cp, ns, "web") == "hey"
    [listed] = helm.releases(alice, ns)
    assert (listed["name"], listed["chart"], listed["revision"]) == ("web", "hello-0.2.0", "2")

    helm.rollback(alice, "web", ns, 1)
    assert greeting(cp, ns, "web") == "hi"
    history = helm.history(alice, "web", ns)
    assert [h["revision"] for h in history] == [1, 2, 3]
    assert history[-1]["chart"] == "hello-0.1.0"

    helm.uninstall(alice, "web", ns)
    assert greeting(cp, ns, "web") is None
    assert helm.releases(alice, ns) == []


def test_rbac_decides_what_each_user_may_do(
    cp: ControlPlane, helm: Helm, repo: HttpChartRepo
) -> None:
    ns, other = namespace(cp), namespace(cp)
    viewer = user(cp, ns, "viewer", VIEW)
    with pytest.raises(HelmError, match="forbidden") as refused:
        helm.install(viewer, "web", "hello", ns, {}, version="0.1.0", repo=repo.url)
    assert refused.value.command == "helm install"
    assert greeting(cp, ns, "web") is None

    owner = user(cp, other, "owner", EVERYTHING)  # all rights, but in another namespace
    with pytest.raises(HelmError, match="forbidden"):
        helm.install(owner, "web", "hello", ns, {}, version="0.1.0", repo=repo.url)
    assert greeting(cp, ns, "web") is None
    assert helm.releases(viewer, ns) == []


def test_a_token_reaches_helm_by_its_environment_only(
    cp: ControlPlane, helm: Helm, repo: HttpChartRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = namespace(cp)
    wrong = Credentials("not-a-token-" + uuid.uuid4().hex)
    seen: list[list[str]] = []
    real_run: Callable[..., Any] = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        seen.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    with pytest.raises(HelmError) as refused:
        helm.install(
            wrong, "web", "hello", ns, {"secret": "s3cr3t"}, version="0.1.0", repo=repo.url
        )
    assert "provide credentials" in refused.value.message, refused.value.message
    assert "level=" not in refused.value.message
    assert wrong.token not in refused.value.message and wrong.token not in repr(wrong)
    assert seen and all(wrong.token not in arg and "s3cr3t" not in arg for arg in seen[-1])
    assert helm.environment(wrong, Path("/h"))["HELM_KUBETOKEN"] == wrong.token


def test_each_user_gets_a_helm_home_of_their_own(helm: Helm) -> None:
    a, b = Credentials("token-a-" + uuid.uuid4().hex), Credentials("token-b-" + uuid.uuid4().hex)
    for someone in (a, b):
        helm.run(["version"], someone)  # creates their home
    homes = [helm.homes / a.key, helm.homes / b.key]
    assert homes[0] != homes[1] and all(h.is_dir() for h in homes)
    assert all(h.stat().st_mode & 0o777 == 0o700 for h in homes)
    assert not any(u.token in str(h) for u in (a, b) for h in helm.homes.iterdir())
    env = helm.environment(None, Path("/z"))
    assert "HELM_KUBETOKEN" not in env and "HELM_KUBEAPISERVER" not in env


def test_helms_messages_never_carry_the_token(tmp_path: Path) -> None:
    # A fake helm (named as such): the real one never prints a token, so the redaction
    # of a message that does can only be staged.
    fake = tmp_path / "fake-helm"
    fake.write_text(
        '#!/bin/sh\necho "Error: rejected $HELM_KUBETOKEN at $HELM_KUBEAPISERVER" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    helm = Helm(fake, ApiServer("https://10.0.0.1:6443"), tmp_path / "homes")
    sekrit = Credentials("sekrit-" + uuid.uuid4().hex)
    with pytest.raises(HelmError) as refused:
        helm.uninstall(sekrit, "web", "apps")
    assert refused.value.message == "rejected <token> at https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("chart", "version"),
    [("--help", None), ("-x", None), ("hello", "--devel"), ("oci://-bad/x", None), ("a b", None)],
)
def test_nothing_a_user_gives_becomes_a_helm_flag(
    helm: Helm, chart: str, version: str | None
) -> None:
    with pytest.raises(ValueError):
        helm.template("web", chart, "apps", {}, version=version, repo="http://127.0.0.1:1")


def test_template_renders_a_chart_without_the_cluster(helm: Helm, repo: HttpChartRepo) -> None:
    text = helm.template("web", "hello", "apps", {"greeting": "rendered"}, repo=repo.url)
    assert "name: web-greeting" in text and 'greeting: "rendered"' in text


@pytest.mark.parametrize("name", ["", "Web", "-web", "web-", "a" * 54, "we b", "web;rm"])
def test_bad_release_names_are_refused_before_helm_runs(name: str) -> None:
    with pytest.raises(ValueError, match="release name"):
        check_release_name(name)


@pytest.mark.parametrize("name", ["", "Apps", "apps.x", "a" * 64, "../etc"])
def test_bad_namespaces_are_refused_before_helm_runs(name: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        check_namespace(name)
