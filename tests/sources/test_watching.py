"""A watched manifest directory: changes show up, bad input keeps the last good state."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from nftproxy.model import ServiceName
from nftproxy.sources.manifests import ReadLimits
from nftproxy.sources.watching import ManifestDirectory

WEB = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [ADDR]}]
"""

WEB_SVC = ServiceName("default", "web")


def write(path: Path, text: str) -> None:
    path.write_text(text)
    # Make sure the change is visible even on filesystems with coarse timestamps.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_changes_to_a_file_are_seen_and_unchanged_files_are_not_reparsed(tmp_path):
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    assert src.scan() is True
    services, slices = src.merged()
    assert services[WEB_SVC].ports[0].port == 80
    assert src.scan() is False
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.2"))
    assert src.scan() is True
    _, slices = src.merged()
    assert slices[("default", "web-1")].endpoints[0].ip == "10.244.1.2"


def test_a_file_that_no_longer_parses_keeps_its_objects_last_good_state(tmp_path):
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    write(tmp_path / "web.yaml", "apiVersion: v1\nkind: [unclosed\n")
    assert src.scan() is True
    services, slices = src.merged()
    assert WEB_SVC in services and ("default", "web-1") in slices
    assert src.errors == 1


def test_an_object_that_becomes_invalid_keeps_its_last_good_state_while_others_update(tmp_path):
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    write(tmp_path / "web.yaml", WEB.replace("PORT", "99999").replace("ADDR", "10.244.1.7"))
    src.scan()
    services, slices = src.merged()
    assert services[WEB_SVC].ports[0].port == 80
    assert slices[("default", "web-1")].endpoints[0].ip == "10.244.1.7"


def test_deleting_a_file_removes_its_objects_and_new_files_are_found(tmp_path):
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    (tmp_path / "web.yaml").unlink()
    other = WEB.replace("web", "api").replace("10.96.0.10", "10.96.0.11")
    write(tmp_path / "api.yaml", other.replace("PORT", "81").replace("ADDR", "10.244.1.3"))
    assert src.scan() is True
    services, _ = src.merged()
    assert list(services) == [ServiceName("default", "api")]


def test_a_bad_new_file_is_skipped_without_affecting_the_others(tmp_path):
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    write(
        tmp_path / "zz-bad.yaml",
        "kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: -1}]}\n",
    )
    src = ManifestDirectory([tmp_path])
    src.scan()
    services, _ = src.merged()
    assert list(services) == [WEB_SVC]
    assert src.errors == 1


def test_a_slice_that_gains_a_bad_endpoint_keeps_its_good_ones(tmp_path: Path) -> None:
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    two = WEB.replace("PORT", "80").replace(
        "[ADDR]}]", "[10.244.1.2]}, {addresses: [10.244.1.999]}]"
    )
    write(tmp_path / "web.yaml", two)
    assert src.scan() is True
    _, slices = src.merged()
    assert [e.ip for e in slices[("default", "web-1")].endpoints] == ["10.244.1.2"]
    assert src.errors == 1


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_dangling_symlink_is_reported_once_and_loads_once_it_points_somewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    other = WEB.replace("web", "api").replace("10.96.0.10", "10.96.0.11")
    (tmp_path / "api.yaml").symlink_to("real/api.yaml")
    src = ManifestDirectory([tmp_path])
    assert src.scan() is True
    assert src.scan() is False
    assert errors_logged(caplog) == [
        f"{tmp_path / 'api.yaml'}: is a dangling symlink to real/api.yaml (skipped)"
    ]
    assert src.errors == 1
    assert list(src.merged()[0]) == [WEB_SVC]

    (tmp_path / "real").mkdir()
    write(tmp_path / "real" / "api.yaml", other.replace("PORT", "81").replace("ADDR", "10.244.1.3"))
    assert src.scan() is True
    assert set(src.merged()[0]) == {WEB_SVC, ServiceName("default", "api")}


def test_a_symlink_loop_is_reported_as_a_file_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    src = ManifestDirectory([tmp_path])
    src.scan()
    assert errors_logged(caplog) == [
        f"{tmp_path / 'a.yaml'}: is a symlink to b.yaml, which loops (skipped)",
        f"{tmp_path / 'b.yaml'}: is a symlink to a.yaml, which loops (skipped)",
    ]
    assert list(src.merged()[0]) == [WEB_SVC]


def test_read_limits_apply_to_a_watched_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path], limits=ReadLimits(max_file_bytes=100))
    src.scan()
    assert src.merged() == ({}, {})
    (error,) = errors_logged(caplog)
    assert error.startswith(f"{tmp_path / 'web.yaml'}: larger than the limit of 100 bytes")


def test_a_fifo_in_a_watched_directory_is_skipped_with_one_warning_and_does_not_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "web.yaml", WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    src = ManifestDirectory([tmp_path])
    scan = threading.Thread(target=src.scan, daemon=True)
    scan.start()
    scan.join(timeout=30)
    if scan.is_alive():
        # Release a reader blocked on the FIFO before failing.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("scanning a directory with a FIFO blocked")
    src.scan()
    assert list(src.merged()[0]) == [WEB_SVC]
    assert errors_logged(caplog) == []
    assert not src.incomplete  # nothing about it is unknown: it is no input
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{fifo}: is a FIFO (named pipe); only regular files are read; skipped"
    ]


def test_an_object_in_two_files_keeps_the_first_files_definition_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "1-web.yaml", tmp_path / "2-web.yaml"
    write(first, WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    write(second, WEB.replace("PORT", "81").replace("ADDR", "10.244.1.2"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    services, slices = src.merged()
    assert services[WEB_SVC].ports[0].port == 80
    assert slices["default", "web-1"].endpoints[0].ip == "10.244.1.1"
    src.merged()
    assert errors_logged(caplog) == [
        f"{second}: EndpointSlice default/web-1: duplicate: defined again after {first}, "
        "which is used",
        f"{second}: Service default/web: duplicate: defined again after {first}, which is used",
    ]
    first.unlink()
    src.scan()
    assert src.merged()[0][WEB_SVC].ports[0].port == 81


def test_a_new_file_that_defines_a_running_service_again_does_not_take_it_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running, newcomer = tmp_path / "web.yaml", tmp_path / "a-copy.yaml"  # sorts first
    write(running, WEB.replace("PORT", "80").replace("ADDR", "10.244.1.1"))
    src = ManifestDirectory([tmp_path])
    src.scan()
    assert src.merged()[0][WEB_SVC].ports[0].port == 80
    write(newcomer, WEB.replace("PORT", "81").replace("ADDR", "10.244.1.2"))
    src.scan()
    services, slices = src.merged()
    assert services[WEB_SVC].ports[0].port == 80
    assert slices["default", "web-1"].endpoints[0].ip == "10.244.1.1"
    assert (
        f"{newcomer}: Service default/web: duplicate: defined again after {running}, which is used"
    ) in errors_logged(caplog)
    # Once the running definition goes, the other one is used.
    running.unlink()
    src.scan()
    assert src.merged()[0][WEB_SVC].ports[0].port == 81


def test_a_service_cidr_in_two_files_keeps_one_definition_and_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cidr = "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: main}\n"
    first, second = tmp_path / "1-cidr.yaml", tmp_path / "2-cidr.yaml"
    write(first, cidr + "spec: {cidrs: [10.96.0.0/16]}\n")
    write(second, cidr + "spec: {cidrs: [10.97.0.0/16]}\n")
    src = ManifestDirectory([tmp_path])
    src.scan()
    src.merged()
    assert src.service_cidrs() == ("10.96.0.0/16",)
    assert errors_logged(caplog) == [
        f"{second}: ServiceCIDR main: duplicate: defined again after {first}, which is used"
    ]
