"""Container images for the local cluster, assembled here from binaries built from source.

No registry is reachable from this project's clusters, and none is needed: each image the
e2e specs ask for is written as an OCI image archive under its upstream name and tag, from
the commands `hack/cluster/build.sh` built and a few of Debian's (with the shared libraries
`ldd` says they load). `ctr images import` loads the archives into each node's containerd.

What each image holds is listed in `IMAGES`; the choices are documented in
docs/conformance.md ("Images"). Layers are deterministic (sorted, zero timestamps, root
owner), so an unchanged image has an unchanged digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BUSYBOX_APPLETS",
    "COREDNS_IMAGE",
    "E2E",
    "GROUP",
    "NSSWITCH",
    "PASSWD",
    "PAUSE_IMAGE",
    "WGET_SHIM",
    "File",
    "Image",
    "ImageError",
    "base_files",
    "busybox",
    "catalog",
    "host_binary",
    "layer",
    "oci_archive",
    "parse_ldd",
    "shared_libraries",
    "write_archives",
]

# The registry names the e2e suite of k8s.io/kubernetes v1.36.3 asks for
# (test/utils/image/manifest.go).
E2E = "registry.k8s.io/e2e-test-images"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.15.0"

# Debian's busybox 1.35 crashes on `wget -T` (a segfault, even offline), and the specs call
# `wget -T 5 -qO- URL` and `wget -q -O - URL`. This wget speaks the options they use, with
# curl doing the transfer; anything else is refused rather than guessed.
WGET_SHIM = """#!/bin/sh
# wget for the e2e images: the options the Kubernetes e2e specs use, over curl.
timeout=
out=
quiet=
while [ $# -gt 0 ]; do
    case "$1" in
    -T) timeout=$2; shift 2 ;;
    -T*) timeout=${1#-T}; shift ;;
    --timeout=*) timeout=${1#--timeout=}; shift ;;
    -q) quiet=1; shift ;;
    -qO) quiet=1; out=$2; shift 2 ;;
    -qO*) quiet=1; out=${1#-qO}; shift ;;
    -O) out=$2; shift 2 ;;
    -O*) out=${1#-O}; shift ;;
    -*) echo "wget: unsupported option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -eq 1 ] || { echo "usage: wget [-q] [-T secs] [-O file] URL" >&2; exit 2; }
set -- -sS -f -L "$1"
[ -n "$quiet" ] && set -- "$@" --silent
[ -n "$timeout" ] && set -- --max-time "$timeout" "$@"
if [ -z "$out" ] || [ "$out" = - ]; then
    exec curl "$@"
fi
exec curl -o "$out" "$@"
"""

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
)
GROUP = (
    "root:x:0:\n"
    "nogroup:x:65534:\n"
    "user-defined-in-image:x:1000:\n"
    "group-defined-in-image:x:50000:user-defined-in-image\n"
)
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"

# The applets the specs' shell commands use from a busybox-style image. Not the shell, and
# not nc: busybox's sh runs its own applet for any command it has one for, ahead of PATH,
# and the specs need netcat-openbsd's options (`nc -v -t -w 2`). /bin/sh is dash.
BUSYBOX_APPLETS = [
    "cat",
    "chmod",
    "cp",
    "date",
    "dd",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mv",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "rm",
    "sed",
    "seq",
    "sleep",
    "sort",
    "tail",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "which",
    "xargs",
    "[",
    "expr",
    "find",
    "awk",
    "cut",
    "du",
    "df",
    "mount",
    "umount",
    "httpd",
]


class ImageError(RuntimeError):  # caught by `nftproxy cluster` with ClusterError
    """An image cannot be assembled: a part is missing. Never a reason to pull instead."""


@dataclass(frozen=True)
class File:
    """One entry of an image's single layer."""

    path: str  # inside the image, absolute
    source: Path | None = None  # a host file to copy ...
    data: bytes | None = None  # ... or literal content ...
    link: str | None = None  # ... or a symlink target
    mode: int = 0o755
    directory: bool = False


@dataclass(frozen=True)
class Image:
    name: str  # registry/repository:tag, as the specs ask for it
    files: tuple[File, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # further names for the same image


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects a dynamically linked host binary loads (none for a static one)."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).strip()
        if "not a dynamic executable" in text or "statically linked" in text:
            return []
        raise ImageError(f"ldd {binary}: {text}")
    return parse_ldd(proc.stdout)


def parse_ldd(output: str) -> list[Path]:
    """Paths from `ldd` output: `libx.so => /path (addr)` and the loader's own line."""
    found: list[Path] = []
    for line in output.splitlines():
        line = line.strip()
        if "=> not found" in line:
            raise ImageError(f"a shared library is missing: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ", 1)[0]
        else:
            target = line.split(" ", 1)[0]
        if target.startswith("/"):
            found.append(Path(target))
    return found


def host_binary(path: str, *, at: str | None = None) -> list[File]:
    """A Debian command and the libraries it loads, at the same paths as on the host."""
    source = Path(path)
    if not source.is_file():
        raise ImageError(
            f"{path} is not installed on this machine; the images take it from Debian: "
            "apt-get install busybox-static bind9-dnsutils netcat-openbsd curl"
        )
    files = [File(at or path, source=source.resolve())]
    for lib in shared_libraries(source):
        # The host's modes: the dynamic loader must stay executable.
        files.append(
            File(str(lib), source=lib.resolve(), mode=lib.resolve().stat().st_mode & 0o777)
        )
    return files


def busybox(bin_dir: str = "/bin", *, applets: Sequence[str] = BUSYBOX_APPLETS) -> list[File]:
    files = host_binary("/bin/busybox", at="/bin/busybox")
    files += [File(f"{bin_dir}/{a}", link="/bin/busybox") for a in applets]
    return files


def base_files() -> list[File]:
    """What every image with a shell gets: users, groups, name service, a wget that works."""
    return [
        File("/etc/passwd", data=PASSWD.encode(), mode=0o644),
        File("/etc/group", data=GROUP.encode(), mode=0o644),
        File("/etc/nsswitch.conf", data=NSSWITCH.encode(), mode=0o644),
        File("/tmp", directory=True, mode=0o1777),
        File("/usr/bin/wget", data=WGET_SHIM.encode()),
    ]


def catalog(bin_dir: Path, agnhost_certs: Path | None = None) -> list[Image]:
    """Every image the cluster imports. `bin_dir` is hack/cluster/build.sh's output."""

    def built(name: str, at: str) -> File:
        path = bin_dir / name
        if not path.exists():
            raise ImageError(f"{path} is missing: run hack/cluster/build.sh")
        return File(at, source=path.resolve())

    tools = (
        busybox()
        + host_binary("/usr/bin/dash", at="/bin/dash")
        + [File("/bin/sh", link="dash")]
        + base_files()
        + host_binary("/usr/bin/curl")
        + host_binary("/bin/bash")
        + host_binary("/usr/bin/dig")
        + host_binary("/usr/bin/getent")
        + host_binary("/bin/nc.openbsd", at="/usr/bin/nc")
        + host_binary("/usr/bin/ip", at="/sbin/ip")
    )
    agnhost_files = [built("agnhost", "/agnhost"), File("/agnhost-2", link="agnhost")]
    # The DNS specs run their own DNS server as `/coredns` from the agnhost image.
    agnhost_files.append(built("coredns", "/coredns"))
    agnhost_files += [File("/uploads", directory=True, mode=0o777)]
    if agnhost_certs is not None:
        # `agnhost porter` serves TLS with the key pair its upstream image carries.
        for name in ("localhost.crt", "localhost.key"):
            agnhost_files.append(File(f"/{name}", source=agnhost_certs / name, mode=0o644))
    shell = ("/bin/sh",)
    path_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return [
        Image(PAUSE_IMAGE, (built("pause", "/pause"),), entrypoint=("/pause",)),
        Image(
            f"{E2E}/agnhost:2.63.0",
            tuple(tools + agnhost_files),
            entrypoint=("/agnhost",),
            cmd=("pause",),
            env=path_env,
            aliases=(f"{E2E}/agnhost:2.55",),
        ),
        Image(f"{E2E}/busybox:1.37.0-1", tuple(tools), cmd=shell, env=path_env),
        Image(f"{E2E}/glibc-dns-testing:2.0.0", tuple(tools), cmd=shell, env=path_env),
        # The specs that use nginx only need something serving HTTP on port 80.
        Image(
            f"{E2E}/nginx:1.15-4",
            tuple([*tools, File("/usr/share/nginx/html/index.html", data=b"nginx\n")]),
            cmd=("/bin/httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"),
            env=path_env,
            aliases=(f"{E2E}/nginx:1.27-0",),
        ),
        Image(
            f"{E2E}/regression-issue-74839:1.4",
            (built("regression-issue-74839", "/regression-issue-74839"),),
            entrypoint=("/regression-issue-74839",),
        ),
        # Its hostNetwork pod reads the node's conntrack table (`cat /proc/net/nf_conntrack`).
        Image(
            "registry.k8s.io/build-image/distroless-iptables:v0.9.6",
            tuple(tools),
            cmd=shell,
            env=path_env,
        ),
        Image(
            COREDNS_IMAGE,
            (built("coredns", "/coredns"), *base_files()[:3]),
            entrypoint=("/coredns",),
        ),
    ]


def _tar_entries(files: Iterable[File]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Tar members for the files, parents first, last definition of a path winning."""
    by_path: dict[str, File] = {}
    for f in files:
        if not f.path.startswith("/"):
            raise ImageError(f"image path {f.path!r} is not absolute")
        by_path[f.path.lstrip("/")] = f
    dirs = {"/".join(p.split("/")[:i]) for p in by_path for i in range(1, p.count("/") + 1)} - set(
        by_path
    )
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for d in sorted(dirs):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append((info, None))
    for path in sorted(by_path):
        f = by_path[path]
        info = tarfile.TarInfo(path)
        info.mode = f.mode
        payload: bytes | None = None
        if f.directory:
            info.type = tarfile.DIRTYPE
        elif f.link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, f.link
        else:
            payload = f.data if f.data is not None else Path(f.source or "").read_bytes()
            info.size = len(payload)
        entries.append((info, payload))
    entries.sort(key=lambda e: e[0].name)
    return entries


def layer(files: Iterable[File]) -> bytes:
    """One uncompressed, reproducible layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in _tar_entries(files):
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(image: Image) -> bytes:
    """The image as an OCI image-layout tar, as `ctr images import` reads it."""
    layer_digest, layer_data = _blob(layer(image.files))
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [f"{k}={v}" for k, v in sorted(image.env.items())],
            **({"Entrypoint": list(image.entrypoint)} if image.entrypoint else {}),
            **({"Cmd": list(image.cmd)} if image.cmd else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_data = _blob(_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_data),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer_data),
            }
        ],
    }
    manifest_digest, manifest_data = _blob(_json(manifest))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_data),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
            for name in (image.name, *image.aliases)
        ],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", _json(index))
        for digest, data in (
            (layer_digest, layer_data),
            (config_digest, config_data),
            (manifest_digest, manifest_data),
        ):
            add("blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return out.getvalue()


def write_archives(images: Sequence[Image], out_dir: Path) -> list[Path]:
    """Write each image's archive (only when its content changed); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        data = oci_archive(image)
        path = out_dir / (image.name.replace("/", "_").replace(":", "_") + ".tar")
        if not path.exists() or path.read_bytes() != data:
            # Another `up` may write the same archive at the same time.
            with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False) as tmp:
                tmp.write(data)
            Path(tmp.name).replace(path)
        paths.append(path)
    return paths
