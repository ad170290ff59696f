"""Kubeconfig and in-cluster configuration, and error classification (no apiserver needed)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from nftproxy.kube.client import (
    ApiError,
    Client,
    ClusterConfig,
    Forbidden,
    Gone,
    KubeConfigError,
    Unavailable,
    in_cluster,
    load_kubeconfig,
    status_error,
)

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {ca}
- name: c2
  cluster:
    server: https://example.test
    insecure-skip-tls-verify: true
users:
- name: u1
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
- name: u2
  user:
    tokenFile: token
contexts:
- name: one
  context: {{cluster: c1, user: u1}}
- name: two
  context: {{cluster: c2, user: u2}}
current-context: one
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.write_text(KUBECONFIG.format(ca=b64("CA PEM"), cert=b64("CERT PEM"), key=b64("KEY PEM")))
    (tmp_path / "token").write_text("tok-1\n")
    return path


def test_kubeconfig_data_fields_become_private_files(tmp_path: Path) -> None:
    config = load_kubeconfig(write(tmp_path))
    assert config.server == "https://10.0.0.1:6443"
    assert config.ca_file and Path(config.ca_file).read_text() == "CA PEM"
    assert config.client_cert_file and Path(config.client_cert_file).read_text() == "CERT PEM"
    assert config.client_key_file and Path(config.client_key_file).read_text() == "KEY PEM"
    for name in (config.ca_file, config.client_cert_file, config.client_key_file):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
    assert not config.insecure and config.bearer_token() is None


def test_kubeconfig_context_and_rotating_token_file(tmp_path: Path) -> None:
    config = load_kubeconfig(write(tmp_path), context="two")
    assert config.insecure and config.server == "https://example.test"
    assert config.token_file == str(tmp_path / "token")
    assert config.bearer_token() == "tok-1"
    replacement = tmp_path / "token.new"
    replacement.write_text("tok-2-longer")
    replacement.rename(tmp_path / "token")
    assert config.bearer_token() == "tok-2-longer"


def test_kubeconfig_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path)
    monkeypatch.setenv("KUBECONFIG", f"{path}{os.pathsep}/nonexistent")
    assert load_kubeconfig(None, "two").server == "https://example.test"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("current-context: one", "current-context: nope"), "context 'nope' is not defined"),
        (("server: https://example.test", "server: ftp://x"), "cluster 'c2': server"),
        (("client-key-data: ", "client-key-dat: "), "client-key(-data): is required"),
        (("certificate-authority-data: ", "certificate-authority-data: '!!'#"), "-data: not valid"),
        (("tokenFile: token", "tokenFile: missing"), "user 'u2'.tokenFile"),
    ],
)
def test_kubeconfig_errors_name_file_and_field(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace(*edit))
    context = "two" if "u2" in message or "c2" in message else None
    with pytest.raises(KubeConfigError) as exc:
        load_kubeconfig(path, context)
    assert str(path) in str(exc.value)
    assert message in str(exc.value)


def test_kubeconfig_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="cannot read"):
        load_kubeconfig(tmp_path / "absent")


def test_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("CA")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = in_cluster(tmp_path)
    assert config.server == "https://[fd00::1]:443"
    assert config.bearer_token() == "sa-token"
    (tmp_path / "token").write_text("rotated-token")
    assert config.bearer_token() == "rotated-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster(tmp_path)


def test_status_classification() -> None:
    body = b'{"kind":"Status","reason":"Forbidden","message":"services is forbidden: cannot list"}'
    err = status_error("GET", "/api/v1/services", 403, "Forbidden", body)
    assert isinstance(err, Forbidden) and "cannot list" in str(err)
    assert isinstance(status_error("GET", "/x", 401, "Unauthorized", b""), Forbidden)
    assert isinstance(status_error("GET", "/x", 410, "Gone", b"{}"), Gone)
    assert isinstance(status_error("GET", "/x", 503, "Unavailable", b"oops"), Unavailable)
    assert isinstance(status_error("GET", "/x", 429, "Too Many", b""), Unavailable)
    other = status_error("GET", "/x", 404, "Not Found", b"")
    assert type(other) is ApiError and other.status == 404


def test_connection_refused_is_unavailable() -> None:
    client = Client(ClusterConfig(server="http://127.0.0.1:1"), timeout=2)
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1"):
        client.get("/api/v1/services")
