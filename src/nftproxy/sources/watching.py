"""A directory of manifests as a source of cluster state, for standalone load balancing.

Files are polled (mtime, size, inode), so editors that replace files and ConfigMap volumes
that swap symlinks are both seen. Only changed files are parsed again. A file that fails to
parse keeps its objects' last good state, and so does each object that became invalid:
a typo never tears down a working Service. A symlink that cannot be followed (dangling or
looping) is reported once, as a file error, until it changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nftproxy.model import EndpointSlice, Service, ServiceName
from nftproxy.sources.manifests import (
    DEFAULT_LIMITS,
    Manifests,
    ReadLimits,
    broken_symlink,
    load_paths,
    manifest_files,
)

log = logging.getLogger("nftproxy.manifests")

Signature = tuple[int, int, int]


@dataclass(slots=True)
class _FileState:
    signature: Signature
    services: dict[ServiceName, Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ManifestDirectory:
    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        service_proxy_name: str | None = None,
        limits: ReadLimits = DEFAULT_LIMITS,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.service_proxy_name = service_proxy_name
        self.limits = limits
        self._files: dict[Path, _FileState] = {}
        self._broken: dict[Path, str] = {}  # symlinks that cannot be followed, as reported
        self.errors = 0

    def _current_files(self) -> list[Path]:
        out: list[Path] = []
        for p in self.paths:
            if p.is_dir():
                out.extend(manifest_files(p))
            elif p.exists():
                out.append(p)
        return out

    def scan(self) -> bool:
        """Re-read what changed; True when the merged state may differ."""
        changed = False
        present = self._current_files()
        for gone in self._files.keys() - set(present):
            log.info("%s: removed", gone)
            del self._files[gone]
            changed = True
        broken: dict[Path, str] = {}
        for path in present:
            sig = _signature(path)
            old = self._files.get(path)
            if sig is None:
                self._report_broken_symlink(path, broken)
                continue
            if old is not None and old.signature == sig:
                continue
            self._files[path] = self._reload(path, sig, old)
            changed = True
        self._broken = broken
        return changed

    def _report_broken_symlink(self, path: Path, broken: dict[Path, str]) -> None:
        err = broken_symlink(path)
        if err is None:
            return  # gone since it was listed: the next scan sees it removed
        text = str(err)
        broken[path] = text
        if self._broken.get(path) == text:
            return  # reported by an earlier scan
        self.errors += 1
        kept = " (keeping this file's last good objects)" if path in self._files else " (skipped)"
        log.error("%s%s", text, kept)

    def _reload(self, path: Path, sig: Signature, old: _FileState | None) -> _FileState:
        loaded: Manifests = load_paths(
            [path], service_proxy_name=self.service_proxy_name, limits=self.limits
        )
        state = _FileState(sig, dict(loaded.services), dict(loaded.slices))
        for err in loaded.errors:
            self.errors += 1
            if old is None:
                log.error("%s (skipped)", err)
                continue
            if err.kind == "file":
                log.error("%s (keeping this file's last good objects)", err)
                state.services = dict(old.services)
                state.slices = dict(old.slices)
                continue
            kept = False
            if err.kind == "Service":
                sid = ServiceName(err.namespace, err.name)
                if sid in old.services and sid not in state.services:
                    state.services[sid] = old.services[sid]
                    kept = True
            elif err.kind == "EndpointSlice":
                key = (err.namespace, err.name)
                if key in old.slices and key not in state.slices:
                    state.slices[key] = old.slices[key]
                    kept = True
            log.error("%s%s", err, " (keeping its last good state)" if kept else " (skipped)")
        log.info(
            "%s: %d service(s), %d endpoint slice(s)",
            path,
            len(state.services),
            len(state.slices),
        )
        return state

    def merged(self) -> tuple[dict[ServiceName, Service], dict[tuple[str, str], EndpointSlice]]:
        services: dict[ServiceName, Service] = {}
        slices: dict[tuple[str, str], EndpointSlice] = {}
        for path in sorted(self._files):
            services.update(self._files[path].services)
            slices.update(self._files[path].slices)
        return services, slices

    def files(self) -> Iterable[Path]:
        return sorted(self._files)
