"""`cluster down` removes only what is the cluster's: checked without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nftproxy.lab.cluster.cluster import Cluster, ClusterError
from nftproxy.lab.cluster.config import Spec


def _state(d: Path, name: str) -> None:
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"name": name, "nodes": 2}))


def test_a_pid_file_naming_a_process_outside_the_cluster_is_ignored(tmp_path: Path) -> None:
    # After a reboot, or once the kubelet died, its number may belong to anything.
    spec = Spec(name="gone", dir=tmp_path / "gone")
    _state(spec.dir, "gone")
    (spec.dir / "pids").mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for what in ("node1-kubelet", "node1-proxy", "node2-kubelet"):
            (spec.dir / "pids" / what).write_text(str(bystander.pid))
        assert Cluster(spec).down() == []
        assert bystander.poll() is None, "down signalled a process that is not the cluster's"
        assert not spec.dir.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_directory_without_cluster_state_is_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with pytest.raises(ClusterError, match="holds no cluster state"):
        Cluster(Spec(name="x", dir=d)).down()
    assert (d / "thesis.tex").exists()


def test_another_clusters_directory_is_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "b"
    _state(d, "b")
    with pytest.raises(ClusterError, match="holds cluster 'b', not 'a'"):
        Cluster(Spec(name="a", dir=d)).down()
    assert (d / "state.json").exists()


def test_down_of_a_cluster_that_is_not_there_does_nothing(tmp_path: Path) -> None:
    assert Cluster(Spec(name="a", dir=tmp_path / "never")).down() == []


def test_up_refuses_a_directory_too_long_for_containerds_sockets(tmp_path: Path) -> None:
    d = tmp_path / ("d" * 100)
    with pytest.raises(ClusterError, match=r"too long by \d+ bytes for the sockets"):
        Cluster(Spec(name="a", dir=d)).up()
    assert not d.exists()


def test_up_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClusterError, match="not empty"):
        Cluster(Spec(name="a", dir=tmp_path)).up()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_namespaces_left_by_a_deleted_directory_go_only_with_force(tmp_path: Path) -> None:
    from tests.support.kernel import require_kernel

    require_kernel()
    spec = Spec(name="f" + str(os.getpid() % 10**6), dir=tmp_path / "deleted", nodes=1)
    subprocess.run(["ip", "netns", "add", spec.cp_netns], check=True)
    inside = subprocess.Popen(["ip", "netns", "exec", spec.cp_netns, "sleep", "60"])
    try:
        with pytest.raises(ClusterError, match="add --force"):
            Cluster(spec).down()
        assert inside.poll() is None
        assert Cluster(spec).down(force=True) == []
        assert inside.wait(timeout=10) is not None
        assert not Path("/run/netns", spec.cp_netns).exists()
    finally:
        if inside.poll() is None:
            inside.kill()
            inside.wait()
        subprocess.run(["ip", "netns", "del", spec.cp_netns], capture_output=True)
