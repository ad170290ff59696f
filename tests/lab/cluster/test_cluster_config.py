"""The cluster as data: addresses that cannot collide, configs that stay inside its directory."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.lab.cluster import config, pki
from nftproxy.lab.cluster.config import ConfigError, Spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad"}, "cluster name 'Bad'"),
        ({"name": "waytoolongname"}, "1-10 lowercase"),
        ({"name": "ok", "nodes": 0}, "--nodes 0"),
        ({"name": "ok", "nodes": 10}, "--nodes 10"),
        ({"name": "ok", "proxy": "ipvs"}, "--proxy 'ipvs'"),
    ],
)
def test_bad_spec_is_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Spec(**{"dir": Path("/x"), **kwargs})  # type: ignore[arg-type]


def test_no_node_or_pod_address_falls_in_the_service_range() -> None:
    # kube-proxy drops new connections to unallocated addresses of the Service range, so a
    # node or pod address there would cut the node off under kube-proxy.
    spec = Spec(name="a", dir=Path("/x"), nodes=9)
    nets = [config.NODE_NET] + [ipaddress.ip_network(n.pod_cidr) for n in spec.all_nodes()]
    for i, a in enumerate(nets):
        assert not a.overlaps(config.SERVICE_NET)
        assert all(not a.overlaps(b) for b in nets[i + 1 :])
    addresses = [spec.cp_ip] + [n.ip for n in spec.all_nodes()]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a) in config.NODE_NET for a in addresses)
    for ip in (config.API_SERVICE_IP, config.DNS_SERVICE_IP):
        assert ipaddress.ip_address(ip) in config.SERVICE_NET


def test_two_clusters_share_no_namespace_or_cgroup() -> None:
    a, b = Spec(name="a", dir=Path("/a")), Spec(name="b", dir=Path("/b"))
    assert not set(a.netns_names()) & set(b.netns_names())
    assert not {n.cgroup_root for n in a.all_nodes()} & {n.cgroup_root for n in b.all_nodes()}


def _paths(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from _paths(v)
    elif isinstance(value, str) and value.startswith(("/", "unix:///")):
        yield value.removeprefix("unix://")


def test_runtime_and_kubelet_keep_their_files_in_the_cluster_directory() -> None:
    spec = Spec(name="a", dir=Path("/var/lib/c/a"))
    bin_dir = Path("/cache/bin")
    for node in spec.all_nodes():
        containerd = tomllib.loads(config.containerd_config(spec, node, bin_dir))
        cni = json.loads(config.cni_config(spec, node))
        kubelet = json.loads(config.kubelet_config(spec, node))
        kube_proxy = json.loads(config.kube_proxy_config(spec, node))
        for path in [*_paths(containerd), *_paths(cni), *_paths(kubelet), *_paths(kube_proxy)]:
            if path == node.cgroup_root:
                continue  # a cgroup, not a file: removed by `down`
            assert path.startswith((str(spec.dir) + "/", str(bin_dir) + "/")), path
        # Nothing the VM's own containerd or CNI setup would read or write.
        assert containerd["imports"] == []
        assert containerd["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"]
        assert kubelet["cgroupRoot"] == node.cgroup_root


@pytest.mark.parametrize("where", ["/var/lib/nftproxy-cluster/a", "/tmp/x/a", "/srv/a"])
def test_node_mounts_hide_fixed_paths_but_keep_the_cluster_directory(where: str) -> None:
    spec = Spec(name="a", dir=Path(where))
    cmds = config.node_mounts(spec, spec.node(1))
    for private in config.PRIVATE_DIRS:
        assert any(c.startswith("mount -t tmpfs") and c.endswith(" " + private) for c in cmds)
    rebinds = [c for c in cmds if c.startswith("mount --bind /run/nftproxy-keep/")]
    hidden = where.startswith(("/var/lib/", "/tmp/"))
    assert [c.split()[-1] for c in rebinds] == ([where] if hidden else [])
    if hidden:  # kept before the tmpfs that hides it, bound back after
        parent = next(p for p in config.PRIVATE_DIRS if where.startswith(p + "/"))
        tmpfs = next(
            i
            for i, c in enumerate(cmds)
            if c.startswith("mount -t tmpfs") and c.endswith(" " + parent)
        )
        keep = cmds.index(f"mount --bind {where} /run/nftproxy-keep/0")
        assert keep < tmpfs < cmds.index(rebinds[0])
    assert sum(c.startswith("mount --bind") and "/proc/sys/" in c for c in cmds) == len(
        config.KUBELET_SYSCTLS
    )


def test_node_mounts_keep_what_the_node_runs_from_once_and_quoted() -> None:
    spec = Spec(name="a", dir=Path("/srv/c a"))
    keep = [Path("/tmp/ci/repo"), Path("/tmp/ci/repo/.venv"), Path("/root/.cache/bin")]
    cmds = config.node_mounts(spec, spec.node(1), keep)
    rebinds = [c.split(" ", 3)[3] for c in cmds if c.startswith("mount --bind /run/nftproxy-keep/")]
    assert rebinds == ["/tmp/ci/repo"]  # the venv inside it comes along; /root is not hidden
    assert (
        "mount --bind '/srv/c a/nodes/node1/sysctl/vm.panic_on_oom' /proc/sys/vm/panic_on_oom"
        in cmds
    )
    with pytest.raises(ConfigError, match="under /run"):
        config.node_mounts(spec, spec.node(1), [Path("/run/venv")])


def test_cni_gives_each_node_its_own_pod_range() -> None:
    spec = Spec(name="a", dir=Path("/x"))
    for node in spec.all_nodes():
        conf = json.loads(config.cni_config(spec, node))
        bridge = conf["plugins"][0]
        assert bridge["hairpinMode"] is True
        assert bridge["ipam"]["ranges"][0][0]["subnet"] == node.pod_cidr


def test_tokens_survive_a_second_write(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    users = [
        pki.Token("admin", ("system:masters",)),
        pki.Token("system:node:node1", ("system:nodes",)),
    ]
    first = pki.token_file(path, users)
    second = pki.token_file(path, [*users, pki.Token("extra")])
    assert {k: second[k] for k in first} == first
    assert len(set(second.values())) == 3
    assert f'{first["admin"]},admin,0,"system:masters"' in path.read_text().splitlines()
    assert path.stat().st_mode & 0o077 == 0


def test_certificates_verify_against_the_cluster_ca(tmp_path: Path) -> None:
    crt, _ = pki.issue(
        tmp_path, "apiserver", cn="kube-apiserver", ips=["10.200.0.1"], dns=["kubernetes"]
    )
    client, _ = pki.issue(tmp_path, "client", cn="c", org="system:masters", server=False)
    for cert in (crt, client):
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(cert)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    assert "IP Address:10.200.0.1" in text and "DNS:kubernetes" in text
