"""A watched manifest directory: changes show up, bad input keeps the last good state."""

from __future__ import annotations

import os
from pathlib import Path

from nftproxy.model import ServiceName
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
