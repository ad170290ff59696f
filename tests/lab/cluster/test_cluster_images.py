"""The cluster's images: reproducible OCI archives that hold what the specs run."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from nftproxy.lab.cluster import images
from nftproxy.lab.cluster.images import File, Image, ImageError


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _layer_tar(archive: bytes) -> tarfile.TarFile:
    files = _members(archive)
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    return tarfile.open(fileobj=io.BytesIO(layer))


def test_archive_is_an_oci_layout_whose_blobs_match_their_digests() -> None:
    image = Image(
        "registry.example/team/tool:1.2",
        (File("/bin/tool", data=b"#!/bin/sh\necho hi\n"),),
        entrypoint=("/bin/tool",),
        aliases=("registry.example/team/tool:1.1",),
    )
    files = _members(images.oci_archive(image))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == ["registry.example/team/tool:1.2", "registry.example/team/tool:1.1"]
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"][7:]])
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]


def test_same_content_same_digest_and_parents_come_first() -> None:
    files = (File("/usr/bin/b", data=b"b"), File("/a", link="usr/bin/b"))
    first = images.oci_archive(Image("x/y:1", files))
    assert images.oci_archive(Image("x/y:1", tuple(reversed(files)))) == first
    with _layer_tar(first) as tar:
        names = [m.name for m in tar.getmembers()]
        assert names == ["a", "usr", "usr/bin", "usr/bin/b"]
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert tar.getmember("a").issym()


def test_relative_image_path_is_refused() -> None:
    with pytest.raises(ImageError, match="not absolute"):
        images.layer([File("etc/passwd", data=b"")])


def test_ldd_output_gives_each_library_and_the_loader() -> None:
    out = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
    )
    assert images.parse_ldd(out) == [
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]
    with pytest.raises(ImageError, match="missing"):
        images.parse_ldd("\tlibfoo.so.1 => not found\n")


def test_a_host_binary_brings_the_libraries_it_loads() -> None:
    files = images.host_binary("/bin/sh")
    paths = {f.path for f in files}
    assert "/bin/sh" in paths
    assert any("libc.so" in p for p in paths)


def test_catalog_names_what_is_missing_rather_than_pulling(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"is missing: run hack/cluster/build.sh"):
        images.catalog(tmp_path)


def test_wget_shim_speaks_the_options_the_specs_use(tmp_path: Path) -> None:
    shim = tmp_path / "wget"
    shim.write_text(images.WGET_SHIM)
    shim.chmod(0o755)
    # Port 1 on loopback: refused at once, the way a missing backend looks to a spec.
    proc = subprocess.run(
        [str(shim), "-T", "2", "-qO-", "http://127.0.0.1:1/"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and proc.returncode != 2
    bad = subprocess.run([str(shim), "--spider", "http://x/"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unsupported option --spider" in bad.stderr
